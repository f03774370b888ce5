"""``TrainbusCallback``: transformers.Trainer keeps its loop, trainbus journals and delivers.

The hooks publish our events into a run of the orchestrator (journal, sinks from our registry),
transformers' own callbacks for the integrations taken over are removed, ``evaluate()`` after
``train()`` continues the run, and a run that dies is closed as failed or finished by ``sync``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

transformers = pytest.importorskip("transformers")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from tests.orchestrator.test_kill_sync import log_count, sync  # noqa: E402
from tests.support.kill_job import kill_job  # noqa: E402
from tests.support.tiny_bert import tiny_bert  # noqa: E402
from trainbus import TrainbusCallback  # noqa: E402
from trainbus.bus._cursor import CursorStore  # noqa: E402
from trainbus.bus._errors import ConfigurationError  # noqa: E402
from trainbus.bus._events import (  # noqa: E402
    Evaluate,
    InitEnd,
    Log,
    RunFinished,
    RunStarted,
    StepEnd,
    TrainBegin,
    TrainEnd,
)
from trainbus.bus._journal import JournalReader  # noqa: E402
from trainbus.bus.testing import RecordingSink  # noqa: E402
from trainbus.orchestrator._hf_takeover import taken_over  # noqa: E402
from trainbus.orchestrator.rundir import RunDir, find_run_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def hf_trainer(output_dir: Path, callback: Any, *, report_to: Any = "none", steps: int = 4) -> Any:
    """A ``transformers.Trainer`` on the tiny BERT, logging and evaluating every two steps."""
    model, rows = tiny_bert()
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=report_to,
        disable_tqdm=True,
        use_cpu=True,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=rows[:4], callbacks=[callback]
    )


def journal(run_dir: Path) -> list[Any]:
    return list(JournalReader(RunDir(run_dir).journal_path).read_from(0))


def test_importing_trainbus_does_not_import_transformers() -> None:
    """The bridge is exported lazily: ``import trainbus`` (and the orchestrator) stay light."""
    code = (
        "import sys, trainbus, trainbus.orchestrator; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_train_then_evaluate_is_one_run_with_our_events(tmp_path: Path) -> None:
    """train() then evaluate(): one run directory, the events our Trainer publishes, in order,
    the later call ``continued``, and every event journaled and delivered to a user sink."""
    recorder = RecordingSink()
    callback = TrainbusCallback(sinks=[recorder])
    trainer = hf_trainer(tmp_path, callback)
    trainer.train()
    metrics = trainer.evaluate()

    run_dir = find_run_dir(tmp_path)
    assert callback.run_dir == run_dir.path
    events = journal(run_dir.path)
    assert [e.seq for e in recorder.received] == [e.seq for e in events]  # delivered, in order
    kinds = [type(e) for e in events]
    assert kinds[:3] == [RunStarted, InitEnd, TrainBegin]
    assert [e.continued for e in events if isinstance(e, RunStarted)] == [False, True]
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["completed", "completed"]
    assert kinds.index(TrainEnd) == kinds.index(RunFinished) - 1
    assert [e.global_step for e in events if isinstance(e, StepEnd)] == [1, 2, 3, 4]
    losses = [e.global_step for e in events if isinstance(e, Log) and "loss" in e.logs]
    assert losses == [1, 2, 3, 4]
    evaluations = [e for e in events if isinstance(e, Evaluate)]
    assert [e.global_step for e in evaluations] == [2, 4, 4]
    assert evaluations[-1].metrics["eval_loss"] == pytest.approx(metrics["eval_loss"])
    (started, _) = [e for e in events if isinstance(e, RunStarted)]
    assert started.config["max_steps"] == 4 and started.hparams["hidden_size"] == 16
    assert run_dir.read_record().status == "completed"

    png = tmp_path / "run.png"
    recording = ["--sink-class", "trainbus.bus.testing:RecordingSink"]  # named, as sync asks
    for command in (["show"], ["plot", "-o", str(png)], ["sync", *recording]):
        done = trainbus_cli(*command[:1], str(run_dir.path), *command[1:])
        assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def trainbus_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``trainbus ARGUMENTS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "trainbus", "--log-level", "WARNING", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_transformers_callbacks_taken_over_are_removed(tmp_path: Path) -> None:
    """``report_to`` on transformers' arguments: its TensorBoard callback is removed from the
    trainer and our sink writes the one TensorBoard run, each point once."""
    callback = TrainbusCallback()
    trainer = hf_trainer(tmp_path, callback, report_to=["tensorboard"])
    names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert "TensorBoardCallback" not in names and "TrainbusCallback" in names
    trainer.train()

    (log_dir,) = (tmp_path / "runs").iterdir()  # one TensorBoard run, ours
    tb = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    tb.Reload()
    assert [s.step for s in tb.Scalars("train/loss")] == [1, 2, 3, 4]  # once each
    (started,) = [e for e in journal(callback.run_dir or tmp_path) if isinstance(e, RunStarted)]
    assert started.config["report_to"] == ["tensorboard"]


def test_a_bridge_added_after_init_still_takes_over(tmp_path: Path) -> None:
    """``trainer.add_callback(TrainbusCallback())`` after ``__init__``: transformers' callback is
    removed at ``on_train_begin`` (late: it already started), and the run is ours."""
    late = TrainbusCallback(output_dir=tmp_path / "late")
    other = hf_trainer(tmp_path, transformers.TrainerCallback(), report_to=["tensorboard"])
    assert any(
        type(cb).__name__ == "TensorBoardCallback" for cb in other.callback_handler.callbacks
    )
    other.add_callback(late)
    other.train()
    names = [type(cb).__name__ for cb in other.callback_handler.callbacks]
    assert "TensorBoardCallback" not in names
    assert late.run_dir is not None and late.run_dir.is_relative_to(tmp_path / "late")
    (started,) = [e for e in journal(late.run_dir) if isinstance(e, RunStarted)]
    assert started.config["report_to"] == ["tensorboard"]


def test_integrations_without_a_sink_stay_with_transformers() -> None:
    """Names from transformers' arguments that trainbus has no sink for are left to its own
    callbacks, said in one warning; names given to the bridge are checked strictly."""
    with capture_logs() as logs:
        assert taken_over(None, ["tensorboard", "neptune"], {}) == ["tensorboard"]
    (warning,) = [e for e in logs if e["event"] == "bridge_leaves_integrations_to_transformers"]
    assert warning["integrations"] == ["neptune"]
    with pytest.raises(ConfigurationError, match="neptune"):
        taken_over(["neptune"], [], {})


def test_the_bridge_refuses_trainbus_arguments(tmp_path: Path) -> None:
    """In trainbus's own Trainer the bridge would open a second run: a clear error instead."""
    from trainbus import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ConfigurationError, match=r"transformers\.Trainer"):
        TrainbusCallback().on_init_end(args, None, None)


def run_worker(output_dir: Path, mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``tests/support/bridge_worker.py`` in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.bridge_worker", str(output_dir), mode],
        cwd=ROOT,
        env={**os.environ, "TRAINBUS_LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_train_that_raises_closes_its_run_as_failed(tmp_path: Path) -> None:
    """A script dying of an exception in ``train()`` (no ``on_train_end``) leaves a run closed
    as failed, with the error in ``RunFinished`` and ``run.json``."""
    proc = run_worker(tmp_path / "out", "raise", {"BRIDGE_REPORT_TO": "none"})
    try:
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "boom at step 3" in stderr
    run_dir = find_run_dir(tmp_path / "out")
    (finished,) = [e for e in journal(run_dir.path) if isinstance(e, RunFinished)]
    assert finished.status == "failed" and "boom at step 3" in (finished.error or "")
    record = run_dir.read_record()
    assert record.status == "failed" and "boom at step 3" in (record.error or "")


def mlflow_steps(server_url: str, run_dir: Path, key: str) -> list[int]:
    """Steps of every point MLflow holds for ``key`` in the run's MLflow run, read back with
    ``MlflowClient`` (duplicates included)."""
    from mlflow.tracking import MlflowClient

    mlflow_run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=server_url)
    return sorted(m.step for m in client.get_metric_history(mlflow_run_id, key))


def logged_steps(events: list[Any], key: str) -> list[int]:
    return sorted(
        e.global_step
        for e in events
        if isinstance(e, Log) and isinstance(e.logs.get(key), int | float)
    )


@pytest.mark.mlflow
@pytest.mark.slow
def test_every_point_reaches_mlflow_once(
    tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' report_to=["mlflow", "tensorboard"]: MLflow and TensorBoard hold every
    logged point exactly once (transformers' callbacks removed), and ``trainbus show`` reads
    the run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    experiment = f"bridge-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    callback = TrainbusCallback()
    trainer = hf_trainer(tmp_path, callback, report_to=["mlflow", "tensorboard"], steps=6)
    assert not any(
        isinstance(cb, transformers.integrations.MLflowCallback)
        for cb in trainer.callback_handler.callbacks
    )
    trainer.train()
    trainer.evaluate()
    run_dir = find_run_dir(tmp_path)
    events = journal(run_dir.path)

    for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        expected = logged_steps(events, key)
        assert expected, key
        assert mlflow_steps(mlflow_server.url, run_dir.path, key) == expected, key
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    found = client.get_experiment_by_name(experiment)
    assert len(client.search_runs([found.experiment_id])) == 1  # ours only, for both calls
    (log_dir,) = (tmp_path / "runs").iterdir()
    tb = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    tb.Reload()
    assert [s.step for s in tb.Scalars("train/loss")] == logged_steps(events, "loss")

    shown = trainbus_cli("show", str(run_dir.path))
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout and "mlflow" in shown.stdout


@pytest.mark.mlflow
@pytest.mark.slow
def test_sync_completes_mlflow_after_sigkill(tmp_path: Path, mlflow_server: Any) -> None:
    """transformers.Trainer killed with SIGKILL while MLflow (behind a slow proxy) is behind:
    ``trainbus sync`` delivers the rest, every loss point exactly once."""
    from tests.support.fault_proxy import FaultProxy

    experiment = f"bridge-kill-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    with FaultProxy(mlflow_server.url, latency=0.3) as proxy:
        env = {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_EXPERIMENT_NAME": experiment}
        proc = run_worker(out, "endless", env)
        try:
            run_dir = wait_for_backlog(proc, out, logs=60)
        finally:
            kill_job(proc, out)  # the trainer and the sink process: the whole job
    last = JournalReader(run_dir.journal_path).last_seq()
    assert CursorStore(run_dir.cursor_dir).read("mlflow") < last  # behind at the kill
    assert run_dir.read_record().status == "running"

    result = sync(
        run_dir, {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": experiment}
    )
    assert result.returncode == 0, result.stderr
    events = journal(run_dir.path)
    assert mlflow_steps(mlflow_server.url, run_dir.path, "loss") == logged_steps(events, "loss")


def wait_for_backlog(proc: subprocess.Popen[str], out: Path, *, logs: int) -> RunDir:
    """The run directory once the journal holds ``logs`` Log events and MLflow acknowledged
    some; a hang guard of two minutes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            run_dir = find_run_dir(out)
        except ValueError:
            time.sleep(0.1)
            continue
        if CursorStore(run_dir.cursor_dir).read("mlflow") >= 0 and log_count(run_dir) >= logs:
            return run_dir
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach {logs} logs within two minutes")


class _WaitInFinalEvaluation(transformers.TrainerCallback):  # type: ignore[misc]
    """In the last step's evaluation, waits (hang guard: 60 s) until the sink holds that step's
    loss, and records whether it did."""

    def __init__(self, sink: RecordingSink, steps: int) -> None:
        self.sink, self.steps = sink, steps
        self.seen: bool | None = None

    def _has_last_loss(self) -> bool:
        return any(
            isinstance(e, Log) and e.global_step == self.steps and "loss" in e.logs
            for e in self.sink.received
        )

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self.steps or self.seen is not None:
            return
        end = time.monotonic() + 60.0
        while not self._has_last_loss() and time.monotonic() < end:
            time.sleep(0.01)
        self.seen = self._has_last_loss()


def test_delivery_overlaps_transformers_final_evaluation(tmp_path: Path) -> None:
    """A sink that holds its batches for an hour has the last step's loss while transformers
    runs the final evaluation: the bridge flushed the bus at the last log; the rest follows
    once, in order."""
    sink = RecordingSink("slow", max_batch_latency=3600.0)
    trainer = hf_trainer(tmp_path, TrainbusCallback(sinks=[sink]))
    hook = _WaitInFinalEvaluation(sink, steps=4)
    trainer.add_callback(hook)
    trainer.train()
    assert hook.seen is True
    seqs = [e.seq for e in sink.received]
    assert seqs == sorted(set(seqs)) and isinstance(sink.received[-1], RunFinished)
