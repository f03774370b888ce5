"""One training run, one tracker run: ``evaluate()``/``predict()`` after ``train()`` continue it.

Each trainer call opens the run's sinks again and publishes ``RunStarted`` again; every one after
the first says ``continued=True``, so a sink keeps its tracker run and sends its parameters once.
The resolved ``report_to`` names reach every sink in ``RunStarted.config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainbus.bus._events import Predict, RunFinished, RunStarted
from trainbus.bus._journal import JournalReader
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator import registry
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


def make_trainer(
    output_dir: Path, report_to: str | list[str], sinks: list[RecordingSink]
) -> Trainer:
    """Four steps of a tiny regressor, logging every step."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to,
        disable_tqdm=True,
    )
    return Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        sinks=sinks,
    )


def test_train_evaluate_predict_is_one_run_for_every_sink(tmp_path: Path) -> None:
    """train(), evaluate(), predict(): three ``RunStarted`` (the later two ``continued``), one
    run directory, one TensorBoard run holding the training and the later evaluation, the
    arguments written to it once, and the prediction metrics delivered to a user sink."""
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path, ["tensorboard"], [recorder])
    trainer.train()
    metrics = trainer.evaluate()
    trainer.predict(RegressionDataset(8, seed=2))

    started = [e for e in recorder.received if isinstance(e, RunStarted)]
    assert [e.continued for e in started] == [False, True, True]
    assert sum(isinstance(e, RunFinished) for e in recorder.received) == 3
    (predicted,) = [e for e in recorder.received if isinstance(e, Predict)]
    assert "test_loss" in predicted.metrics
    assert [p.name for p in (tmp_path / "trainbus").iterdir()] == [find_run_dir(tmp_path).path.name]

    (log_dir,) = (tmp_path / "runs").iterdir()  # one TensorBoard run for the three calls
    tb = EventAccumulator(str(log_dir))
    tb.Reload()
    assert [s.step for s in tb.Scalars("train/loss")] == [1, 2, 3, 4]
    (evaluation,) = tb.Scalars("eval/loss")
    assert evaluation.step == 4 and evaluation.value == pytest.approx(metrics["eval_loss"])
    (args_text,) = tb.Tensors("args")  # written once, by the first RunStarted
    assert json.loads(args_text.tensor_proto.string_val[0])["report_to"] == ["tensorboard"]


def test_a_second_call_on_an_open_orchestrator_continues_its_run(tmp_path: Path) -> None:
    """Inside ``async with Orchestrator``, a second trainer call on the same bus continues too."""
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path / "trainer", "none", [])

    async def main() -> None:
        with anyio.fail_after(120):
            async with Orchestrator(
                output_dir=tmp_path / "orch", report_to="none", sinks=[recorder]
            ) as orch:
                await orch.train(trainer)
                await trainer.train_async(launcher=orch)

    anyio.run(main)
    started = [e for e in recorder.received if isinstance(e, RunStarted)]
    assert [e.continued for e in started] == [False, True]


def test_report_to_is_published_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``report_to="all"`` reaches the sinks as the names it resolved to, as transformers
    normalises the field; the journal holds the same list."""
    monkeypatch.setitem(registry.INTEGRATIONS, "dvclive", None)  # keep "all" to TensorBoard here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    resolved = registry.resolve_report_to("all", dict(__import__("os").environ))
    assert "tensorboard" in resolved and "all" not in resolved
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path, "all", [recorder])
    trainer.train()
    (started,) = [e for e in recorder.received if isinstance(e, RunStarted)]
    assert started.config["report_to"] == resolved
    journal = JournalReader(find_run_dir(tmp_path).journal_path).read_from(0)
    (journaled,) = [e for e in journal if isinstance(e, RunStarted)]
    assert journaled.config["report_to"] == resolved
    assert trainer.args.report_to == "all"  # the user's arguments are left as given


def test_without_an_orchestrator_no_integration_is_reported(tmp_path: Path) -> None:
    """The local launcher starts no integration, and ``RunStarted`` says so (``[]``)."""
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path, "none", [])
    trainer.train(launcher=LocalLauncher(sinks=[recorder]))
    (started,) = [e for e in recorder.received if isinstance(e, RunStarted)]
    assert started.config["report_to"] == [] and not started.continued


def test_token_counts_are_published_in_clear(tmp_path: Path) -> None:
    """``include_num_input_tokens_seen`` and the ``num_input_tokens_seen`` it logs are counts,
    not credentials: ``RunStarted`` and the logs carry them unmasked."""
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path, "none", [recorder])
    trainer.args.include_num_input_tokens_seen = "all"
    trainer.train()
    (started,) = [e for e in recorder.received if isinstance(e, RunStarted)]
    assert started.config["include_num_input_tokens_seen"] == "all"
    logged = [e.logs for e in recorder.received if type(e).__name__ == "Log"]
    seen = [logs["num_input_tokens_seen"] for logs in logged if "num_input_tokens_seen" in logs]
    assert len(seen) == 5 and all(isinstance(value, int) for value in seen)


async def test_the_start_up_log_line_names_the_resolved_integrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_started`` lists what ``report_to`` resolved to and, under ``"all"``, why the others
    were skipped."""
    from structlog.testing import capture_logs

    monkeypatch.setitem(registry.INTEGRATIONS, "dvclive", None)  # no SDK import for this check
    with capture_logs() as logs:
        async with Orchestrator(output_dir=tmp_path, report_to="all", env={}):
            pass
    (line,) = [entry for entry in logs if entry["event"] == "run_started"]
    assert line["report_to"] == registry.resolve_report_to("all", {})
    assert "MLFLOW_TRACKING_URI" in line["skipped"]["mlflow"]


@pytest.mark.parametrize("report_to", ["tensorboard", "none", ["tensorboard", "tensorboard"]])
def test_report_to_is_normalised_as_transformers_does(
    tmp_path: Path, report_to: str | list[str]
) -> None:
    """The published ``report_to`` equals what transformers' ``TrainingArguments`` turns the same
    value into (a duplicate name is started, and listed, once)."""
    transformers = pytest.importorskip("transformers")
    recorder = RecordingSink()
    trainer = make_trainer(tmp_path, report_to, [recorder])
    trainer.train()
    (started,) = [e for e in recorder.received if isinstance(e, RunStarted)]
    theirs = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), report_to=report_to)
    assert started.config["report_to"] == list(dict.fromkeys(theirs.report_to))
