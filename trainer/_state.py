"""`TrainerState`, `TrainerControl` and `ExportableState`: what callbacks read and write.

`TrainerState` is written to ``trainer_state.json`` in every checkpoint in exactly Hugging Face's
format (2-space indent, sorted keys, trailing newline, the same keys), so either side can resume
from the other's checkpoints. Two deliberate differences, both on the reading/refreshing side:
our loader tolerates keys it does not know (with a warning) where Hugging Face raises, and
`TrainerState.record_callback_states` replaces the stored list of a callback class wholesale
instead of appending to it at every save (Hugging Face issue #33875).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from trainbus.bus._errors import StateFileError
from trainbus.bus._files import replace_file

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = [
    "ExportableState",
    "TrainerControl",
    "TrainerState",
    "callback_state",
    "is_exportable",
    "restore_callback_states",
]

_log = structlog.get_logger(__name__)


class ExportableState:
    """Mixin for objects whose state is checkpointed as ``{"args": ..., "attributes": ...}``.

    ``args`` are constructor keyword arguments and ``attributes`` are set after construction, so
    a restore never unpickles anything: both must hold JSON values only.
    """

    def state(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement state()")

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Any:
        instance = cls(**state.get("args", {}))
        for name, value in state.get("attributes", {}).items():
            setattr(instance, name, value)
        return instance


def is_exportable(obj: object) -> bool:
    """Ours or `transformers`' ``ExportableState``: users may register Hugging Face's callbacks."""
    if isinstance(obj, ExportableState):
        return True
    return any(
        klass.__name__ == "ExportableState" and klass.__module__.startswith("transformers")
        for klass in type(obj).__mro__
    )


def callback_state(obj: object) -> dict[str, Any]:
    """The ``{"args", "attributes"}`` state of an exportable object, refusing anything else."""
    if not is_exportable(obj):
        raise TypeError(
            f"{type(obj).__name__} is not an ExportableState, so its state cannot be saved; "
            "subclass trainer.state.ExportableState and implement state()."
        )
    result: dict[str, Any] = obj.state()  # type: ignore[attr-defined]  # checked just above
    return result


@dataclasses.dataclass
class TrainerControl(ExportableState):
    """The five flags through which callbacks steer the loop; the handler resets them per event."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "should_training_stop": self.should_training_stop,
                "should_epoch_stop": self.should_epoch_stop,
                "should_save": self.should_save,
                "should_evaluate": self.should_evaluate,
                "should_log": self.should_log,
            },
            "attributes": {},
        }


class _Registry(Protocol):
    """The part of `CallbackHandler` a restore needs."""

    callbacks: list[Any]

    def add_callback(self, callback: object) -> None: ...

    def pop_callback(self, callback: object) -> Any: ...


def _rebuild(obj: object, stored: Mapping[str, Any]) -> Any:
    """A fresh object of ``obj``'s class built from a stored state (no unpickling)."""
    fresh = type(obj)(**stored.get("args", {}))
    for name, value in stored.get("attributes", {}).items():
        setattr(fresh, name, value)
    return fresh


def restore_callback_states(
    stored: Mapping[str, Any], handler: _Registry, control: TrainerControl
) -> TrainerControl:
    """Rebuild registered stateful callbacks (and the control) from a checkpoint's states.

    Objects are paired with stored states by class name, in registration order. Restored
    callbacks replace the first registered object of their class and move to the end of the list,
    as in Hugging Face; the restored control is returned. Stored names nobody registers are
    reported once and ignored.
    """
    queued: list[Any] = []
    missing: list[str] = []
    for name, value in stored.items():
        states = value if isinstance(value, list) else [value]
        live = [obj for obj in [*handler.callbacks, control] if type(obj).__name__ == name]
        if not live:
            missing.append(name)
            continue
        for obj, state in zip(live, states, strict=False):
            fresh = _rebuild(obj, state)
            if isinstance(obj, TrainerControl):
                control = fresh
            else:
                handler.pop_callback(obj)  # this very object, not the first of its class
                queued.append(fresh)
    if missing:
        _log.warning(
            "Checkpoint contains callback states not included in current configuration. Ignoring.",
            callbacks=missing,
        )
    for callback in queued:
        handler.add_callback(callback)
    return control


class _TrainerLike(Protocol):
    def is_local_process_zero(self) -> bool: ...

    def is_world_process_zero(self) -> bool: ...


@dataclasses.dataclass
class TrainerState:
    """The loop's progress, readable by callbacks; "step" always means one optimizer update."""

    epoch: float = 0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Like Hugging Face, also accept None and a list of live objects (snapshotted here);
        # typed code should call record_callback_states instead.
        if self.log_history is None:
            self.log_history = []
        stored: object = self.stateful_callbacks
        if stored is None:
            self.stateful_callbacks = {}
        elif isinstance(stored, list | tuple):
            # Hugging Face accepts the live objects here and snapshots them.
            self.stateful_callbacks = {}
            self.record_callback_states(stored)

    def record_callback_states(self, objects: Iterable[object]) -> None:
        """Snapshot the states of ``objects`` (callbacks and the control), keyed by class name.

        A class registered more than once is stored as a list in registration order, rebuilt
        from scratch each time so it never grows between checkpoints. Classes stored earlier but
        not among ``objects`` are kept, so a resumed run does not silently drop their state.
        """
        fresh: dict[str, Any] = {}
        for obj in objects:
            name = type(obj).__name__
            snapshot = callback_state(obj)
            if name not in fresh:
                fresh[name] = snapshot
            elif isinstance(fresh[name], list):
                fresh[name].append(snapshot)
            else:
                fresh[name] = [fresh[name], snapshot]
        self.stateful_callbacks = {**self.stateful_callbacks, **fresh}

    def save_to_json(self, json_path: str | os.PathLike[str]) -> None:
        """Write ``trainer_state.json`` as Hugging Face does; atomically, via a sibling file."""
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        # The usual permissions (not mkstemp's owner-only), like Hugging Face's file.
        replace_file(json_path, text.encode("utf-8"))

    @classmethod
    def load_from_json(cls, json_path: str | os.PathLike[str]) -> TrainerState:
        """Read ``trainer_state.json``; keys from a newer writer are skipped with a warning.

        A truncated or corrupt file raises one `StateFileError` naming the file and the fault.
        """
        try:
            data = json.loads(Path(json_path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateFileError(
                f"{json_path} is not valid JSON (truncated or corrupt?): {exc}."
            ) from exc
        if not isinstance(data, dict):
            raise StateFileError(f"{json_path} must hold a JSON object, got {type(data).__name__}.")
        step = data.get("global_step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise StateFileError(f"{json_path}: global_step must be an integer >= 0, got {step!r}.")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            _log.warning("trainer_state_unknown_keys_ignored", path=str(json_path), keys=unknown)
        return cls(**{key: value for key, value in data.items() if key in known})

    def compute_steps(self, args: TrainingArguments, max_steps: int) -> None:
        """Resolve logging/eval/save intervals given as ratios (< 1) against ``max_steps``."""
        for kind in ("logging", "eval", "save"):
            value = getattr(args, f"{kind}_steps")
            if value is None:
                continue
            if value < 1:
                value = math.ceil(max_steps * value)
            setattr(self, f"{kind}_steps", int(value))

    def init_training_references(
        self,
        trainer: _TrainerLike,
        max_steps: int,
        num_train_epochs: int,
        trial: Any = None,
    ) -> None:
        """Refresh what belongs to this run (not to a loaded checkpoint): length, ranks, trial."""
        hp_name = getattr(trainer, "hp_name", None)
        current_trial = getattr(trainer, "_trial", None)
        if hp_name is not None and current_trial is not None:
            self.trial_name = hp_name(current_trial)
        self.trial_params = None
        if trial is not None:
            params = trial if isinstance(trial, Mapping) else getattr(trial, "params", {})
            self.trial_params = dict(params)
        self.max_steps = max_steps
        self.num_train_epochs = num_train_epochs
        self.is_local_process_zero = trainer.is_local_process_zero()
        self.is_world_process_zero = trainer.is_world_process_zero()
