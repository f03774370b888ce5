"""Reading a checkpoint's ``trainer_state.json`` back, callback states included (HF spec §5.6).

Callback states are restored only with ``restore_callback_states_from_checkpoint``: for every
class name stored in the checkpoint, the registered objects of exactly that class are paired in
order with the stored states and rebuilt with ``from_state``. A rebuilt ``TrainerControl``
becomes the trainer's control; other rebuilt callbacks replace their originals and move to the
end of the list, as in Hugging Face.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from trainer.callbacks import CallbackHandler
from trainer.checkpoint import STATE_NAME
from trainer.state import TrainerControl, TrainerState, is_exportable

__all__ = ["exportable_objects", "load_state", "restore_callback_states"]

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


def restore_callback_states(
    handler: CallbackHandler, state: TrainerState, control: TrainerControl
) -> TrainerControl:
    """Rebuild stateful callbacks and the control from ``state``; returns the control to use."""
    restored: list[Any] = []
    for name, stored in state.stateful_callbacks.items():
        snapshots = stored if isinstance(stored, list) else [stored]
        registered = [
            obj for obj in exportable_objects(handler, control) if type(obj).__name__ == name
        ]
        if not registered:
            logger.warning(
                "checkpoint holds the state of a callback that is not registered; ignoring it",
                callback=name,
            )
            continue
        for original, snapshot in zip(registered, snapshots, strict=False):
            rebuilt: Any = type(original).from_state(snapshot)  # type: ignore[attr-defined]  # exportable: filtered above
            if isinstance(original, TrainerControl):
                control = rebuilt
            else:
                handler.remove_callback(original)
                restored.append(rebuilt)
    for callback in restored:
        handler.add_callback(callback)
    return control
