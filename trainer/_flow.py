"""`DefaultFlowCallback`: when the loop logs, evaluates, saves and stops, written as a callback.

The loop only polls the flags; this callback, first in the list, raises them. Users can veto or
force any decision from a later callback's ``on_step_end`` / ``on_epoch_end``. The rules are
Hugging Face's (v5), including the two end-of-run rules: at the stopping step a ``"steps"``
evaluation runs if the step was not already due (never twice), and a checkpoint is forced only
for the ``"steps"`` save strategy (an ``"epoch"`` save follows at the epoch end anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainbus.trainer._callbacks import TrainerCallback

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["DefaultFlowCallback"]


def _every(step: int, interval: int) -> bool:
    """Whether ``step`` lands on a multiple of ``interval`` (an interval of 0 never does)."""
    return interval > 0 and step % interval == 0


class DefaultFlowCallback(TrainerCallback):
    """Raises ``should_log`` / ``should_evaluate`` / ``should_save`` / ``should_training_stop``."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        logging_steps = state.logging_steps  # _every() inlined: this runs once per update
        if args.logging_strategy == "steps" and logging_steps > 0 and step % logging_steps == 0:
            control.should_log = True

        eval_by_steps = args.eval_strategy == "steps" and args.eval_delay <= step
        eval_due = eval_by_steps and _every(step, state.eval_steps)
        if eval_due:
            control.should_evaluate = True
        if args.save_strategy == "steps" and _every(step, state.save_steps):
            control.should_save = True

        if step >= state.max_steps:
            control.should_training_stop = True
            if eval_by_steps and not eval_due:
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control
