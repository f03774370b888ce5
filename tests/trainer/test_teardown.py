"""The end of ``train()``: delivery overlaps the final evaluation and save.

The sinks here hold their batches for an hour, so whatever one has received before the run
closes was sent because the trainer flushed the bus (``Bus.begin_flush``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_bert import tiny_bert
from trainbus.bus._events import Log, RunFinished
from trainbus.bus.testing import RecordingSink
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._trainer import Trainer

HOUR = 3600.0
STEPS = 4
WAIT_S = 60.0
"""How long a hook waits for the sink before saying it never got the events (a hang guard)."""


def _trainer(output_dir: Path, sink: RecordingSink, hook: TrainerCallback, **more: Any) -> Trainer:
    pytest.importorskip("transformers")
    model, rows = tiny_bert()
    arguments: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        **more,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**arguments),
        train_dataset=rows,
        eval_dataset=rows,
        sinks=[sink],
        callbacks=[hook],
    )


def _has_last_loss(sink: RecordingSink) -> bool:
    return any(
        isinstance(e, Log) and e.global_step == STEPS and "loss" in e.logs for e in sink.received
    )


class _WaitForDelivery(TrainerCallback):
    """In the final evaluation and save, waits until the sink holds the last step's loss."""

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.seen: dict[str, bool] = {}

    def _wait(self, where: str, state: Any) -> None:
        if state.global_step != STEPS:
            return
        end = time.monotonic() + WAIT_S
        while not _has_last_loss(self.sink) and time.monotonic() < end:
            time.sleep(0.01)
        self.seen[where] = _has_last_loss(self.sink)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._wait("evaluate", state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._wait("save", state)


def test_the_sinks_get_the_last_steps_while_the_final_evaluation_and_save_run(
    tmp_path: Path,
) -> None:
    """With a final evaluation and save, the sink receives the last training step's log while
    they run, long before its batch timer; the run then delivers the rest, once, in order."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    hook = _WaitForDelivery(sink)
    trainer = _trainer(
        tmp_path,
        sink,
        hook,
        eval_strategy="steps",
        eval_steps=STEPS,
        save_strategy="steps",
        save_steps=STEPS,
    )
    trainer.train()
    assert hook.seen == {"evaluate": True, "save": True}
    seqs = [e.seq for e in sink.received]
    assert seqs == sorted(set(seqs))
    assert isinstance(sink.received[-1], RunFinished)
    evaluations = [e for e in sink.received if isinstance(e, Log) and "eval_loss" in e.logs]
    assert [e.global_step for e in evaluations] == [STEPS]


class _Nothing(TrainerCallback):
    """Records how many events the sink held when training ended."""

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.at_train_end: int | None = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.at_train_end = len(self.sink.received)


def test_without_final_work_the_last_events_travel_together_at_the_close(tmp_path: Path) -> None:
    """No final evaluation, save or model: nothing is flushed early, so the last step's events
    and the run's end go out in one batch at the close (one round trip, not two)."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    hook = _Nothing(sink)
    _trainer(tmp_path, sink, hook).train()
    assert hook.at_train_end == 0
    assert len(sink.batches) == 1
    assert isinstance(sink.received[-1], RunFinished)
