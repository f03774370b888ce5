"""TensorBoard sink: event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.sinks.scripted import T0, deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Log, RunStarted
from trainbus.sinks._tfrecord import crc32c, masked_crc32c, py_crc32c
from trainbus.sinks.tensorboard import TensorBoardSink


def _accumulator(directory: Path) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_crc32c_matches_known_vectors_and_tensorboard() -> None:
    """The CRC is CRC-32C (Castagnoli), native and pure-Python agree, the mask is TensorFlow's."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
        masked_crc32c as reference,
    )

    assert crc32c(b"123456789") == py_crc32c(b"123456789") == 0xE3069283
    for data in (b"", b"a", b"hello world" * 7, bytes(range(256))):
        assert masked_crc32c(data) == reference(data)
        assert py_crc32c(data) == crc32c(data)


async def test_every_scalar_at_its_step_through_the_bus(tmp_path: Path) -> None:
    """Through a real Bus, each logged number is a scalar at its global step with HF prefixes."""
    events = scripted_run(40, eval_every=10)
    sink = TensorBoardSink(run_dir=tmp_path, logging_dir=tmp_path / "tb")
    with anyio.fail_after(30):
        report = await deliver_through_bus(events, [sink], tmp_path)
    assert report["tensorboard"].undelivered == 0
    acc = _accumulator(tmp_path / "tb")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 41))
    assert [e.value for e in loss] == pytest.approx([train_logs(s)["loss"] for s in range(1, 41)])
    eval_acc = acc.Scalars("eval/accuracy")
    assert [(e.step, e.value) for e in eval_acc] == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20, 30, 40)
    ]
    assert len(acc.Scalars("train/epoch")) == 44  # train and eval logs both carry epoch


async def test_arguments_and_config_written_as_text_without_secrets(tmp_path: Path) -> None:
    """RunStarted's arguments and model config become the `args` and `model_config` texts."""
    sink = TensorBoardSink(run_dir=tmp_path, logging_dir=tmp_path / "tb")
    with anyio.fail_after(10):
        await sink.open()
        await sink.write(scripted_run(1))
        await sink.close()
    acc = _accumulator(tmp_path / "tb")
    args = json.loads(acc.Tensors("args")[0].tensor_proto.string_val[0])
    assert args["learning_rate"] == 0.001
    assert args["hub_token"] == "***"
    config = json.loads(acc.Tensors("model_config")[0].tensor_proto.string_val[0])
    assert config == {"hidden_size": 16, "model_type": "tiny"}


async def test_string_values_become_text_at_their_step(tmp_path: Path) -> None:
    """A string in a log entry is written as text at the step, as HF's callback does."""
    sink = TensorBoardSink(run_dir=tmp_path, logging_dir=tmp_path / "tb")
    event = Log(run_id="r", seq=0, time=T0, global_step=7, logs={"note": "hello", "loss": 0.5})
    with anyio.fail_after(10):
        await sink.open()
        await sink.write([event])
        await sink.close()
    acc = _accumulator(tmp_path / "tb")
    note = acc.Tensors("train/note")[0]
    assert (note.step, note.tensor_proto.string_val[0]) == (7, b"hello")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(7, 0.5)]


async def test_replay_after_restart_writes_nothing_twice(tmp_path: Path) -> None:
    """A second sink on the same run directory skips events already written, same directory."""
    events = scripted_run(10, eval_every=100)
    events[0] = RunStarted(
        run_id="run-1", seq=0, time=T0, run_name="x", output_dir=str(tmp_path / "out")
    )
    for _ in range(2):
        sink = TensorBoardSink(run_dir=tmp_path / "out" / "trainbus" / "run-1")
        with anyio.fail_after(10):
            await sink.open()
            await sink.write(events[:6])
            await sink.write(events)
            await sink.close()
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 1
    assert [e.step for e in _accumulator(runs[0]).Scalars("train/loss")] == list(range(1, 11))


class _FakeWriter:
    """Stands in for an injected ``SummaryWriter`` and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any, Any]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        self.calls.append(("scalar", tag, scalar_value, global_step))

    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> None:
        self.calls.append(("text", tag, text_string, global_step))

    def flush(self) -> None:
        self.calls.append(("flush", None, None, None))


async def test_injected_writer_gets_the_same_calls_as_hf(tmp_path: Path) -> None:
    """With tb_writer the sink calls add_scalar/add_text on it and flushes once per batch."""
    writer = _FakeWriter()
    sink = TensorBoardSink(run_dir=tmp_path, tb_writer=writer)
    with anyio.fail_after(10):
        await sink.open()
        await sink.write(scripted_run(2, eval_every=100))
        await sink.close()
    scalars = [c for c in writer.calls if c[0] == "scalar"]
    assert ("scalar", "train/loss", 0.5, 2) in scalars
    assert len(scalars) == 6
    assert [c[1] for c in writer.calls if c[0] == "text"] == ["args", "model_config"]
    assert [c[0] for c in writer.calls].count("flush") == 2  # one per batch, one at close


@pytest.mark.slow
def test_train_evaluate_predict_is_one_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report_to=["tensorboard"] through our Trainer: train(), evaluate() and predict() write
    into one directory (one TensorBoard run) with the later evaluation at the last step, the
    prediction's metrics as test/* scalars, and the arguments' text once."""
    from tests.support.tiny_bert import tiny_bert
    from trainbus import Trainer, TrainingArguments

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model, rows = tiny_bert()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        logging_steps=1,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=["tensorboard"],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    evaluated = trainer.evaluate()
    predicted = trainer.predict(rows).metrics
    [run] = (tmp_path / "out" / "runs").iterdir()
    acc = _accumulator(run)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/loss")] == [2, 4, 4]
    assert acc.Scalars("eval/loss")[-1].value == pytest.approx(evaluated["eval_loss"])
    [test_loss] = acc.Scalars("test/loss")
    assert (test_loss.step, test_loss.value) == (4, pytest.approx(predicted["test_loss"]))
    assert len(acc.Tensors("args")) == 1


def test_from_env_reads_logging_dir(tmp_path: Path) -> None:
    """TENSORBOARD_LOGGING_DIR picks the directory, with ~ expanded."""
    env = {"TENSORBOARD_LOGGING_DIR": "~/tb-logs"}
    sink = TensorBoardSink.from_env(env, run_dir=tmp_path, run_name="r")
    assert sink.logging_dir == Path("~/tb-logs").expanduser()
    assert TensorBoardSink.is_available({})
    assert isinstance(ConfigurationError("x"), ValueError)
