"""AzureML sink against azureml-core's own run classes, and against transformers'
``AzureMLCallback`` on the same training.

Outside Azure, ``Run.get_context()`` is an offline run that keeps nothing: it prints each call.
So the calls are recorded by a subclass of that offline run (``RecordingRun``), and the real
offline context is checked through what it prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Event, Log, Predict
from trainbus.sinks.azureml import AzureMLSink

run_module = pytest.importorskip("azureml.core.run")

Call = tuple[str, Any, str]


class RecordingRun(run_module._OfflineRun):  # type: ignore[misc]  # azureml-core is untyped
    """azureml-core's offline run, keeping each ``log`` call instead of printing it."""

    def __init__(self) -> None:
        super().__init__(run_id="recording")
        self.calls: list[Call] = []

    def log(self, name: str, value: Any, description: str = "") -> None:
        self.calls.append((name, value, description))


def _expected(events: list[Event]) -> list[Call]:
    """Hugging Face's rule: every int or float of every Log (and, ours, of every Predict), key
    as is, described by the key."""
    return [
        (key, value, key)
        for event in events
        if isinstance(event, (Log, Predict))
        for key, value in (event.logs if isinstance(event, Log) else event.metrics).items()
        if isinstance(value, (int, float))
    ]


async def test_every_number_is_logged_once_in_order(tmp_path: Path) -> None:
    """Through a real Bus, each int/float of each Log is one run.log(key, value,
    description=key), in the order logged; strings are skipped."""
    events = scripted_run(12, eval_every=4)
    events[3] = msgspec.structs.replace(events[3], logs={**train_logs(3), "note": "text"})
    finished = events[-1]
    predicted = {"test_loss": 0.25, "test_runtime": 0.01}
    events[-1:] = [
        Predict(run_id=finished.run_id, seq=finished.seq, time=finished.time, metrics=predicted),
        msgspec.structs.replace(finished, seq=finished.seq + 1),
    ]
    run = RecordingRun()
    sink = AzureMLSink(run_dir=tmp_path, run=run)
    with anyio.fail_after(60):
        report = await deliver_through_bus(events, [sink], tmp_path)
    assert report["azure_ml"].undelivered == 0
    assert run.calls == _expected(events)
    assert ("eval_loss", eval_logs(4)["eval_loss"], "eval_loss") in run.calls
    assert run.calls[-2:] == [
        ("test_loss", 0.25, "test_loss"),
        ("test_runtime", 0.01, "test_runtime"),
    ]
    assert all(name != "note" for name, _, _ in run.calls)


async def test_reopened_sink_continues_without_logging_twice(tmp_path: Path) -> None:
    """A sink opened again on the run directory (evaluate() after train(), or a replay) logs
    only the events the earlier one did not."""
    events = scripted_run(6, eval_every=3)
    run = RecordingRun()
    for upto in (8, len(events)):
        sink = AzureMLSink(run_dir=tmp_path, run=run)
        with anyio.fail_after(30):
            await sink.open()
            await sink.write(events[:upto])
            await sink.write(events[:upto])  # the same batch again, as after a retry
            await sink.close()
    assert run.calls == _expected(events)


async def test_real_offline_context_prints_each_value(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """report_to=["azure_ml"] outside Azure gets azureml-core's offline run: nothing fails, and
    the offline run prints each value the sink logged."""
    from trainbus.orchestrator.registry import build_sinks

    [(_, sink)] = build_sinks(["azure_ml"], {}, run_dir=tmp_path, run_name="r")
    events = scripted_run(3)
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert isinstance(sink, AzureMLSink) and type(sink.run) is run_module._OfflineRun
    printed = capfd.readouterr().out
    for key, value, _ in _expected(events):
        assert f"Attempted to log scalar metric {key}:\n{value}\n" in printed
    assert sink.logged_values == len(_expected(events))


def _train(flavour: str, output_dir: Path, run: RecordingRun) -> list[dict[str, Any]]:
    """The tiny BERT, 4 steps, evaluated and predicted, logging to ``run`` through transformers'
    AzureMLCallback or our sink."""
    from tests.support.tiny_bert import tiny_bert

    model, rows = tiny_bert()
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "use_cpu": True,
        "disable_tqdm": True,
        "save_strategy": "no",
        "report_to": "none",
    }
    trainer: Any
    if flavour == "transformers":
        import transformers
        from transformers.integrations import AzureMLCallback

        args = transformers.TrainingArguments(**settings)
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            callbacks=[AzureMLCallback(azureml_run=run)],
        )
    else:
        import trainbus

        trainer = trainbus.Trainer(
            model=model,
            args=trainbus.TrainingArguments(**settings),
            train_dataset=rows,
            sinks=[AzureMLSink(run=run)],
        )
    trainer.train()
    trainer.evaluate(rows)
    trainer.predict(rows)
    history: list[dict[str, Any]] = trainer.state.log_history
    return history


_TIMINGS = ("_runtime", "_per_second")


@pytest.mark.slow
def test_same_calls_as_transformers_azureml_callback(tmp_path: Path) -> None:
    """train(), evaluate() and predict(): the same names, in the same order, with the same
    descriptions and the same values (timings aside) through our sink as through transformers'
    callback, plus predict()'s metrics, which transformers never logs."""
    pytest.importorskip("transformers")
    theirs, ours = RecordingRun(), RecordingRun()
    _train("transformers", tmp_path / "hf", theirs)
    _train("trainbus", tmp_path / "tb", ours)
    predicted = [call for call in ours.calls if call[0].startswith("test_")]
    assert [n for n, _, _ in predicted] == [
        "test_loss",
        "test_runtime",
        "test_samples_per_second",
        "test_steps_per_second",
    ]
    assert ours.calls[len(theirs.calls) :] == predicted  # the rest is transformers' calls
    shared = ours.calls[: len(theirs.calls)]
    assert [(n, d) for n, _, d in shared] == [(n, d) for n, _, d in theirs.calls]
    for (name, our_value, _), (_, their_value, _) in zip(shared, theirs.calls, strict=True):
        if not name.endswith(_TIMINGS):
            assert our_value == pytest.approx(their_value, rel=1e-4), name
    assert {"loss", "eval_loss", "train_loss"} <= {name for name, _, _ in ours.calls}


def test_all_asks_for_an_azure_job_and_leaves_it_to_mlflow() -> None:
    """Under "all", azure_ml is picked inside an Azure ML job only, and left out when MLflow is
    picked (transformers leaves it out whenever the mlflow package is installed)."""
    from trainbus.orchestrator.registry import available_integrations, load_sink_class

    assert load_sink_class("azure_ml") is AzureMLSink
    in_job = {"AZUREML_RUN_ID": "run-1"}
    assert "azure_ml" in available_integrations(in_job)
    assert "azure_ml" not in available_integrations({**in_job, "MLFLOW_TRACKING_URI": "file:x"})
    assert AzureMLSink.is_available(in_job) is True
    assert AzureMLSink.is_available({}) is False


def test_azure_failures_become_retryable_or_permanent() -> None:
    """A refusal of the data never passes; a service or network failure may."""
    from azureml.exceptions import AzureMLException, UserErrorException

    from trainbus.sinks.azureml import _map_errors

    with pytest.raises(PermanentSinkError), _map_errors():
        raise UserErrorException("run.log does not support list type")
    with pytest.raises(RetryableSinkError), _map_errors():
        raise AzureMLException("service unavailable")
    with pytest.raises(RetryableSinkError), _map_errors():
        raise ConnectionResetError("reset")
    with pytest.raises(ConfigurationError), _map_errors():
        raise ConfigurationError("a bug stays what it is")
