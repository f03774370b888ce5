"""How a ``Trainer`` gets its run: the entry-point launcher, an orchestrator handed over, and the
rank both read from one place."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from trainbus.bus._events import Evaluate, RunFinished, RunStarted, StepEnd
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator._launcher import LAUNCHER
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._launcher import resolve_launcher
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


def make_trainer(output_dir: Path, max_steps: int = 4) -> Trainer:
    """A tiny regression trainer that reports to nothing but the journal."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
    )


def test_the_default_launcher_is_the_orchestrators(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``trainbus.launchers: default`` entry point resolves to this package's launcher."""
    monkeypatch.delenv("TRAINBUS_LAUNCHER", raising=False)
    assert resolve_launcher() is LAUNCHER


def test_evaluate_after_train_continues_the_same_run(tmp_path: Path) -> None:
    """train() then evaluate() on one trainer write one run directory with one journal."""
    trainer = make_trainer(tmp_path)
    trainer.train()
    metrics = trainer.evaluate()
    runs = list((tmp_path / "trainbus").iterdir())
    assert len(runs) == 1
    run_dir = find_run_dir(tmp_path)
    events = list(JournalReader(run_dir.journal_path).read_from(0))
    assert [e.seq for e in events] == list(range(len(events)))
    starts = [i for i, e in enumerate(events) if isinstance(e, RunStarted)]
    assert len(starts) == 2
    assert sum(isinstance(e, StepEnd) for e in events[: starts[1]]) == 4
    evaluations = [e for e in events[starts[1] :] if isinstance(e, Evaluate)]
    assert [e.metrics["eval_loss"] for e in evaluations] == [pytest.approx(metrics["eval_loss"])]
    assert run_dir.read_record().status == "completed"


async def test_orchestrator_train_hands_its_open_run_to_the_trainer(tmp_path: Path) -> None:
    """``orch.train(trainer)`` trains on the orchestrator's own bus: its journal holds the whole
    training and the trainer's ``output_dir`` gets no run of its own."""
    trainer = make_trainer(tmp_path / "trainer-out", max_steps=3)
    with anyio.fail_after(60):
        async with Orchestrator(output_dir=tmp_path / "orch", report_to="none") as orch:
            output = await orch.train(trainer)
    assert output.global_step == 3
    assert not (tmp_path / "trainer-out" / "trainbus").exists()
    events = list(JournalReader(orch.run_dir.journal_path).read_from(0))
    assert sum(isinstance(e, StepEnd) for e in events) == 3
    assert isinstance(events[-1], RunFinished) and events[-1].status == "completed"
    assert orch.run_dir.read_record().status == "completed"


def test_a_trainer_given_an_orchestrator_opens_and_continues_that_run(tmp_path: Path) -> None:
    """``Trainer.train(launcher=orch)`` opens that orchestrator's run for the call and closes it;
    an ``evaluate()`` through the same orchestrator appends to the same journal."""
    trainer = make_trainer(tmp_path, max_steps=2)
    orch = Orchestrator.for_trainer(trainer)
    trainer.train(launcher=orch)
    assert orch.run_dir.read_record().status == "completed"
    trainer.launcher = orch
    trainer.evaluate()
    assert [p.name for p in (tmp_path / "trainbus").iterdir()] == [orch.run_id]
    events = list(JournalReader(orch.run_dir.journal_path).read_from(0))
    assert [e.seq for e in events] == list(range(len(events)))
    assert isinstance(events[-1], RunFinished)
    assert any(isinstance(e, Evaluate) for e in events)


def test_rank_and_world_size_come_from_the_process_group_for_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a process group that disagrees with ``RANK``/``WORLD_SIZE`` (``mp.spawn`` sets no
    ``RANK``), the orchestrator takes the group's answer, the same as ``TrainingArguments``."""
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
        assert (args.process_index, args.world_size) == (0, 1)
        plain = Orchestrator(output_dir=tmp_path, report_to="none")
        assert (plain.rank, plain.world_size) == (0, 1)
        trainer = make_trainer(tmp_path)
        from_trainer = Orchestrator.for_trainer(trainer)
        assert (from_trainer.rank, from_trainer.world_size) == (0, 1)
        assert not from_trainer.run_dir.path.name.endswith("-rank3")
    finally:
        dist.destroy_process_group()


def test_a_launcher_that_does_not_import_is_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered launcher whose module is missing falls back to the local one, and says so."""
    from structlog.testing import capture_logs

    from trainbus.trainer._launcher import ENTRY_POINT_GROUP, LocalLauncher

    dist_info = tmp_path / "broken_launcher-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-launcher\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module_anywhere:LAUNCHER\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRAINBUS_LAUNCHER", "broken")
    with capture_logs() as logs:
        launcher = resolve_launcher()
    assert isinstance(launcher, LocalLauncher)
    (warning,) = [entry for entry in logs if entry["event"] == "launcher_unavailable"]
    assert warning["log_level"] == "warning"
    assert warning["launcher"] == "no_such_module_anywhere:LAUNCHER"
