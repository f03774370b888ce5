"""The entry-point launcher: ``Trainer.train()`` in a plain script goes through the orchestrator."""

from __future__ import annotations

from pathlib import Path

from trainbus.bus._events import Evaluate, RunStarted, StepEnd
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.launcher import LAUNCHER
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._launcher import resolve_launcher
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


def test_the_default_launcher_is_the_orchestrators() -> None:
    """The ``trainbus.launchers: default`` entry point resolves to this package's launcher."""
    assert resolve_launcher() is LAUNCHER


def test_evaluate_after_train_continues_the_same_run(tmp_path: Path) -> None:
    """train() then evaluate() on one trainer write one run directory with one journal."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    runs = list((tmp_path / "trainbus").iterdir())
    assert len(runs) == 1
    run_dir = find_run_dir(tmp_path)
    events = list(JournalReader(run_dir.journal_path).read_from(0))
    assert [e.seq for e in events] == list(range(len(events)))
    assert sum(isinstance(e, RunStarted) for e in events) == 2
    assert sum(isinstance(e, StepEnd) for e in events) == 4
    assert isinstance([e for e in events if isinstance(e, Evaluate)][-1], Evaluate)
    assert run_dir.read_record().status == "completed"
