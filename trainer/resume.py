"""Reading a checkpoint's ``trainer_state.json`` back, and which objects a checkpoint records.

Callback states are restored (``trainer.state.restore_callback_states``, HF spec §5.6) only with
``restore_callback_states_from_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from trainer.checkpoint import STATE_NAME
from trainer.handler import CallbackHandler
from trainer.state import TrainerControl, TrainerState, is_exportable

__all__ = ["exportable_objects", "load_state"]

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
