"""Sinks in a process of their own: a real child process follows the journal while it grows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Log, RunFinished, RunStarted, StepEnd
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.orchestrator.sink_host import NICENESS, read_reports
from trainbus.orchestrator.sync import sync_run


def _slow_training(steps: int) -> object:
    """Publishes a run over about a second, so the child sees the journal while it grows."""

    def work(bus: Bus) -> int:
        bus.emit(RunStarted, run_name="hosted", config={"learning_rate": 0.1})
        for step in range(1, steps + 1):
            bus.emit(StepEnd, global_step=step)
            bus.emit(Log, global_step=step, logs={"loss": 1.0 / step, "learning_rate": 0.1})
            time.sleep(0.02)
        bus.emit(RunFinished, global_step=steps, status="completed")
        return steps

    return work


async def _niceness(pid: int) -> int:
    """The child's niceness once it has lowered it (it does so first thing after starting
    Python); what it is after a minute otherwise."""
    import psutil

    child = psutil.Process(pid)
    for _ in range(1200):
        if child.nice() != os.nice(0):
            break
        await anyio.sleep(0.05)
    return int(child.nice())


async def test_report_to_sinks_run_in_a_child_process_and_deliver_everything(
    tmp_path: Path,
) -> None:
    """TensorBoard in the child writes every scalar at its step; a user sink stays in process;
    the child runs at a lower CPU priority; its report comes back and its cursor covers the whole
    journal."""
    logs = tmp_path / "tb"
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(logs), "TRAINBUS_SINK_PROCESS": "1"}
    local = RecordingSink("local")
    with anyio.fail_after(90):
        async with Orchestrator(
            output_dir=tmp_path, report_to="tensorboard", sinks=[local], env=env
        ) as orch:
            assert orch.sink_process
            assert [r.name for r in orch.bus.sinks] == ["local"]  # TensorBoard moved out
            await orch.run_in_thread(_slow_training(40))  # type: ignore[arg-type]
            assert orch._host is not None
            assert await _niceness(orch._host.process.pid) == os.nice(0) + NICENESS
    run_dir = find_run_dir(tmp_path)
    reports = read_reports(run_dir)
    assert list(reports) == ["tensorboard"]
    last_seq = local.received[-1].seq
    assert reports["tensorboard"].undelivered == 0
    assert reports["tensorboard"].acknowledged_seq == last_seq
    assert (run_dir.cursor_dir / "tensorboard.cursor").read_text().strip() == str(last_seq)
    acc = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    acc.Reload()
    points = [(s.step, round(s.value, 6)) for s in acc.Scalars("train/loss")]
    assert points == [(step, round(1.0 / step, 6)) for step in range(1, 41)]
    assert run_dir.read_record().status == "completed"


async def test_a_killed_sink_process_costs_the_run_nothing_and_sync_delivers_the_rest(
    tmp_path: Path,
) -> None:
    """SIGKILL the child mid-run: training goes on, the run closes without waiting for it, and
    ``trainbus sync`` delivers every scalar from the journal afterwards."""
    logs = tmp_path / "tb"
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(logs), "TRAINBUS_SINK_PROCESS": "1"}
    with anyio.fail_after(90):
        async with Orchestrator(output_dir=tmp_path, report_to="tensorboard", env=env) as orch:
            assert orch._host is not None
            orch._host.process.kill()
            assert await orch.run_in_thread(_slow_training(20)) == 20  # type: ignore[arg-type]
    run_dir = find_run_dir(tmp_path)
    assert run_dir.read_record().status == "completed"
    assert read_reports(run_dir) == {}  # the child never got to write one
    with anyio.fail_after(60):
        reports = await sync_run(tmp_path, env=env)
    assert reports["tensorboard"].undelivered == 0
    acc = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted({s.step for s in acc.Scalars("train/loss")}) == list(range(1, 21))


async def test_a_copy_of_the_pipe_held_elsewhere_does_not_stall_the_end(tmp_path: Path) -> None:
    """A process forked during the run (a DataLoader worker) holds a copy of the child's stdin,
    so the end of the run cannot rely on end of file: the child is told, and finishes cleanly."""
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb")}
    copies: list[int] = []
    try:
        with anyio.fail_after(25):  # a child left waiting would only be killed after 2 + 30 s
            async with Orchestrator(
                output_dir=tmp_path,
                report_to="tensorboard",
                env=env,
                sink_process=True,
                flush_timeout=2.0,
            ) as orch:
                assert orch._host is not None and orch._host.process.stdin is not None
                copies.append(os.dup(orch._host.process.stdin.fileno()))
                await orch.run_in_thread(_slow_training(5))  # type: ignore[arg-type]
    finally:
        for fd in copies:
            os.close(fd)
    assert read_reports(find_run_dir(tmp_path))["tensorboard"].undelivered == 0


def test_the_flag_is_read_from_the_environment_with_a_clear_error(tmp_path: Path) -> None:
    """Unset lets each sink choose; set, it decides for every ``report_to`` sink."""
    assert Orchestrator(output_dir=tmp_path, env={}).sink_process is None
    assert Orchestrator(output_dir=tmp_path, env={"TRAINBUS_SINK_PROCESS": "yes"}).sink_process
    assert (
        Orchestrator(output_dir=tmp_path, env={"TRAINBUS_SINK_PROCESS": "0"}).sink_process is False
    )
    with pytest.raises(ConfigurationError, match="TRAINBUS_SINK_PROCESS"):
        Orchestrator(output_dir=tmp_path, env={"TRAINBUS_SINK_PROCESS": "maybe"})


def test_a_trainer_run_with_the_variable_set_delivers_from_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Trainer.train()`` as a script calls it: the variable alone moves ``report_to`` sinks."""
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    logs = tmp_path / "tb"
    monkeypatch.setenv("TRAINBUS_SINK_PROCESS", "1")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        disable_tqdm=True,
        report_to="tensorboard",
        use_cpu=True,
        save_strategy="no",
    )
    Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16)).train()
    run_dir = find_run_dir(tmp_path / "out")
    assert read_reports(run_dir)["tensorboard"].undelivered == 0
    acc = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    acc.Reload()
    assert [s.step for s in acc.Scalars("train/loss")] == list(range(1, 7))


def test_a_run_whose_sink_process_still_delivers_counts_as_live() -> None:
    """After the training process died, sync must wait for the sink process it left."""
    import subprocess
    import sys

    from trainbus.orchestrator.rundir import RunRecord

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = RunRecord(run_id="r", run_name="r", output_dir=".", pid=gone.pid)
    assert not record.is_live()
    record.sink_pid = os.getpid()  # stands in for a sink process that is still running
    assert record.is_live()
    record.status = "completed"
    assert not record.is_live()


@pytest.mark.parametrize("variable", [None, "0"])
def test_sdk_sinks_choose_the_sink_process_unless_the_variable_keeps_them(
    variable: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, DVCLive (an SDK sink: ``prefers_sink_process``) runs in the sink process while
    TensorBoard stays in the training process; ``TRAINBUS_SINK_PROCESS=0`` keeps both in. Either
    way DVCLive's own reader finds every step."""
    pytest.importorskip("dvclive")
    from tests.sinks.dvc_repo import isolate_dvc
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    isolate_dvc(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    if variable is None:
        monkeypatch.delenv("TRAINBUS_SINK_PROCESS", raising=False)
    else:
        monkeypatch.setenv("TRAINBUS_SINK_PROCESS", variable)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        disable_tqdm=True,
        report_to=["tensorboard", "dvclive"],
        use_cpu=True,
        save_strategy="no",
    )
    Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16)).train()
    run_dir = find_run_dir(tmp_path / "out")
    reports = read_reports(run_dir)
    if variable is None:
        assert list(reports) == ["dvclive"] and reports["dvclive"].undelivered == 0
    else:
        assert reports == {}
    import dvclive.utils

    rows = dvclive.utils.parse_tsv(run_dir.path / "dvclive" / "plots" / "metrics" / "loss.tsv")
    assert [int(row["step"]) for row in rows] == list(range(1, 7))
