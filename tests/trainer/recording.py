"""Shared pieces of the loop tests: a recording callback, a bus recorder, a trainer factory."""

from __future__ import annotations

import copy
import faulthandler
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trainbus.bus._events import RUN_EVENT_TYPES, Event
from trainbus.bus.testing import RecordingSink
from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
from trainbus.trainer._callbacks import EVENT_NAMES
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

TIME_LIMIT_S = 120


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Bound every loop test: a hang dumps all threads' stacks and ends the test process.

    Loop tests are synchronous (the bus's loop runs in a thread), so ``anyio.fail_after`` cannot
    bound them; faulthandler's watchdog works even when a thread is stuck inside torch.
    """
    faulthandler.dump_traceback_later(TIME_LIMIT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass
class Seen:
    """One hook call as a callback saw it."""

    event: str
    global_step: int
    epoch: float
    flags: tuple[bool, bool, bool, bool, bool]
    payload: dict[str, Any] | None = None


class RecordingCallback(TrainerCallback):
    """Overrides every hook and records what it saw, including the control flags on entry."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    @property
    def events(self) -> list[str]:
        """The hook names without ``on_``, in call order."""
        return [seen.event for seen in self.seen]

    def _record(self, event: str, state: Any, control: Any, kwargs: dict[str, Any]) -> None:
        payload = kwargs.get("logs", kwargs.get("metrics"))
        flags = (
            control.should_training_stop,
            control.should_epoch_stop,
            control.should_save,
            control.should_evaluate,
            control.should_log,
        )
        self.seen.append(Seen(event, state.global_step, state.epoch, flags, copy.deepcopy(payload)))


def _make_hook(name: str) -> Callable[..., None]:
    def hook(self: RecordingCallback, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record(name.removeprefix("on_"), state, control, kwargs)

    hook.__name__ = name
    return hook


for _name in EVENT_NAMES:
    setattr(RecordingCallback, _name, _make_hook(_name))


class StopAt(TrainerCallback):
    """Raises ``should_training_stop`` at the end of one given update."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


@dataclass
class Run:
    """A trainer wired to a recording callback and a recording sink."""

    trainer: Trainer
    callback: RecordingCallback
    sink: RecordingSink
    extra: dict[str, Any] = field(default_factory=dict)

    def bus_events(self) -> list[Event]:
        """Everything the sink received, in ``seq`` order."""
        return sorted(self.sink.received, key=lambda event: event.seq)

    def bus_hooks(self) -> list[str]:
        """The tags of the Hugging Face events on the bus (run-level events left out)."""
        return [
            type(e).__struct_config__.tag  # type: ignore[misc]  # every event has a str tag
            for e in self.bus_events()
            if not isinstance(e, RUN_EVENT_TYPES)
        ]


def make_run(
    tmp_path: Path,
    *,
    train_size: int = 16,
    eval_size: int = 8,
    callbacks: list[Any] | None = None,
    model: Any = None,
    compute_metrics: Any = None,
    **overrides: Any,
) -> Run:
    """A tiny regression run: batch 4, CPU, no progress bar, no reporting, checkpoints in tmp."""
    defaults: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 0.01,
        "disable_tqdm": True,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "num_train_epochs": 1,
    }
    args = TrainingArguments(**{**defaults, **overrides})
    recorder = RecordingCallback()
    sink = RecordingSink(max_batch_latency=0.0)
    trainer = Trainer(
        model if model is not None else TinyRegressor(),
        args,
        train_dataset=RegressionDataset(train_size),
        eval_dataset=RegressionDataset(eval_size, seed=1) if eval_size else None,
        compute_metrics=compute_metrics,
        callbacks=[recorder, *(callbacks or [])],
        launcher=LocalLauncher(sinks=[sink]),
    )
    return Run(trainer, recorder, sink)
