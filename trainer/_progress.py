"""`ProgressCallback` (tqdm bars) and `PrinterCallback` (plain prints): the last callbacks.

The trainer appends exactly one of them, after every other callback, so they show the flags and
logs everyone else already saw. Neither mutates the shared ``logs`` dict: Hugging Face's printer
pops ``total_flos`` from it, which also strips it from the metrics ``train()`` returns; we drop it
from the printed copy only.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from trainbus.trainer._callbacks import TrainerCallback

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["PrinterCallback", "ProgressCallback"]


def _display(value: Any) -> Any:
    """Floats at 4 significant digits, as Hugging Face v5 prints them."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _length(obj: Any) -> int | None:
    """How many batches a loader has, or None for iterable-only loaders (no bar then)."""
    try:
        return len(obj)
    except TypeError:
        return None


class PrinterCallback(TrainerCallback):
    """Print each log entry on the local main process (used when ``disable_tqdm`` is set)."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if type(logs) is dict or isinstance(logs, MutableMapping):  # a plain dict: no ABC check
            # Hugging Face's printer removes it from the logged dict itself, on every rank: the
            # metrics train() returns (and save_metrics writes) then lack it, and so do ours.
            logs.pop("total_flos", None)
        if logs is None or not state.is_local_process_zero:
            return
        print({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items()})


class ProgressCallback(TrainerCallback):
    """A training bar in updates, a prediction bar in batches, and logs written above them."""

    def __init__(self, max_str_len: int = 100) -> None:
        self.training_bar: Any = None
        self.prediction_bar: Any = None
        self.max_str_len = max_str_len
        self.current_step = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True)
        self.current_step = 0

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and self.training_bar is not None:
            # After a resume the first update jumps straight to the resumed step.
            self.training_bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

    def on_prediction_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        eval_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        total = _length(eval_dataloader)
        if not state.is_world_process_zero or total is None:
            return
        if self.prediction_bar is None:
            self.prediction_bar = tqdm(
                total=total, leave=self.training_bar is None, dynamic_ncols=True
            )
        self.prediction_bar.update(1)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._close_prediction_bar(state)

    def on_predict(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._close_prediction_bar(state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or self.training_bar is None or logs is None:
            return
        shown = {  # floats (every entry, in a training log) formatted without a call each
            k: f"{v:.4g}" if type(v) is float else self._shorten(v)
            for k, v in logs.items()
            if k != "total_flos"
        }
        self.training_bar.write(str(shown))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.close()
        self.training_bar = None

    def _shorten(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > self.max_str_len:
            return (
                f"[String too long to display, length: {len(value)} > {self.max_str_len}. "
                "Consider increasing `max_str_len` if needed.]"
            )
        return _display(value)

    def _close_prediction_bar(self, state: TrainerState) -> None:
        if state.is_world_process_zero and self.prediction_bar is not None:
            self.prediction_bar.close()
        self.prediction_bar = None
