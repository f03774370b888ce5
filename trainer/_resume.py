"""Reading a checkpoint's ``trainer_state.json`` back, and which objects a checkpoint records.

Callback states are restored (``trainbus.trainer._state.restore_callback_states``, HF spec §5.6)
only with ``restore_callback_states_from_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from trainbus.trainer._checkpoint import STATE_NAME
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._state import TrainerControl, TrainerState, is_exportable

__all__ = ["exportable_objects", "load_state", "warn_overridden_arguments"]

logger = structlog.get_logger(__name__)


def load_state(checkpoint: Path) -> TrainerState:
    """The checkpoint's state, forgetting a best checkpoint whose directory is gone."""
    state = TrainerState.load_from_json(checkpoint / STATE_NAME)
    if state.best_model_checkpoint is not None and not Path(state.best_model_checkpoint).is_dir():
        logger.warning(
            "best checkpoint no longer exists; forgetting it",
            best_model_checkpoint=state.best_model_checkpoint,
        )
        state.best_model_checkpoint = None
    return state


def exportable_objects(handler: CallbackHandler, control: TrainerControl) -> list[object]:
    """The objects whose states a checkpoint records: stateful callbacks, then the control."""
    return [cb for cb in handler.callbacks if is_exportable(cb)] + [control]


_RUN_SHAPE = ("logging_steps", "eval_steps", "save_steps", "train_batch_size")
"""State fields a resumed run takes from its checkpoint even when the arguments now differ."""


def warn_overridden_arguments(fresh: TrainerState, loaded: TrainerState) -> None:
    """Say which intervals and batch size the checkpoint imposes over the current arguments.

    As in Hugging Face, the loaded state wins (the flow callback reads ``state.logging_steps``
    and friends); ``fresh`` holds what the arguments resolved to, ratios already made absolute.
    """
    differences = {
        name: {"arguments": getattr(fresh, name), "checkpoint": getattr(loaded, name)}
        for name in _RUN_SHAPE
        if getattr(loaded, name) is not None and getattr(fresh, name) != getattr(loaded, name)
    }
    if differences:
        logger.warning("resumed_state_overrides_arguments", differences=differences)
