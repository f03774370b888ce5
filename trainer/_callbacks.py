"""`TrainerCallback`: Hugging Face's sixteen hooks, and how to tell which ones a callback uses.

A hook inherited from a base class (ours, or ``transformers``' own ``TrainerCallback``) is a no-op,
so ``overridden_hook`` returns ``None`` for it and the handler (``trainbus.trainer._handler``) never
calls it: a callback pays only for the hooks it really implements.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from trainbus.bus._dispatch import Hook
from trainbus.bus._events import HF_EVENT_TYPES, hook_name

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = [
    "EVENT_NAMES",
    "Hook",
    "HookResult",
    "TrainerCallback",
    "overridden_hook",
]

EVENT_NAMES: Final = tuple(hook_name(event_type) for event_type in HF_EVENT_TYPES)
"""The sixteen hook names, one per Hugging Face event of the bus's union (``StepEnd`` ->
``on_step_end``): the events are the one place they are written."""

HookResult: TypeAlias = "TrainerControl | Coroutine[Any, Any, TrainerControl | None] | None"
"""What a hook returns: nothing, a replacement control, or (``async def``) a coroutine of those.

Only coroutines are awaited (on the bus's loop); any other return value is taken as the control."""


class TrainerCallback:
    """Base class for control callbacks: every hook is a no-op that the handler never calls.

    A hook receives ``args``, ``state`` and ``control`` positionally and the common keyword
    arguments (``model``, ``processing_class``, ``optimizer``, ``lr_scheduler``,
    ``train_dataloader``, ``eval_dataloader``, plus ``logs`` or ``metrics`` where they apply). It
    may edit ``control`` in place or return a replacement; ``async def`` hooks are allowed.
    """

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """End of the trainer's constructor."""
        return None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """Start of training; ``should_training_stop`` was just cleared."""
        return None

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """End of training, after the summary log and loading the best model."""
        return None

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """Start of an epoch; ``should_epoch_stop`` was just cleared."""
        return None

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """End of an epoch, also one cut short by a stop flag or ``max_steps``."""
        return None

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """First micro-batch of an update; log/evaluate/save flags were just cleared."""
        return None

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """After a micro-batch that is not the last of its accumulation window."""
        return None

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """After clipping, before ``optimizer.step()``: gradients are still there."""
        return None

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """After ``optimizer.step()``, before gradients are zeroed."""
        return None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """After ``global_step`` was incremented; the place to raise log/evaluate/save flags."""
        return None

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """End of an evaluation; ``metrics`` carry the ``eval_`` prefix."""
        return None

    def on_predict(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """End of ``predict()``; ``metrics`` carry the ``test_`` prefix."""
        return None

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """A checkpoint was fully written."""
        return None

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """A log entry (``logs``) was appended to ``state.log_history``."""
        return None

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """After one evaluation or prediction batch."""
        return None

    def on_push_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> HookResult:
        """Start of a push to a model hub; the returned control is ignored."""
        return None


def _is_base_hook(klass: type) -> bool:
    """Whether ``klass`` is a base class whose hooks are all no-ops (ours or transformers')."""
    if klass is TrainerCallback:
        return True
    return klass.__name__ == "TrainerCallback" and klass.__module__.startswith("transformers")


def overridden_hook(callback: object, name: str) -> Hook | None:
    """The bound hook ``name`` of ``callback``, or None when calling it would do nothing."""
    instance_attrs = getattr(callback, "__dict__", {})
    if name in instance_attrs:
        hook: Hook = getattr(callback, name)
        return hook
    for klass in type(callback).__mro__:
        if name in vars(klass):
            if _is_base_hook(klass):
                return None
            bound: Hook = getattr(callback, name)
            return bound
    return None
