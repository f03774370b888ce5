"""TrainerState / TrainerControl: fields, step resolution, trainer_state.json, callback states."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._early_stopping import EarlyStoppingCallback
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._progress import PrinterCallback
from trainbus.trainer._state import TrainerControl, TrainerState, restore_callback_states

HF_FIELDS: dict[str, Any] = {
    "epoch": 0,
    "global_step": 0,
    "max_steps": 0,
    "logging_steps": 500,
    "eval_steps": 500,
    "save_steps": 500,
    "train_batch_size": None,
    "num_train_epochs": 0,
    "num_input_tokens_seen": 0,
    "total_flos": 0,
    "log_history": [],
    "best_metric": None,
    "best_global_step": None,
    "best_model_checkpoint": None,
    "is_local_process_zero": True,
    "is_world_process_zero": True,
    "is_hyper_param_search": False,
    "trial_name": None,
    "trial_params": None,
    "stateful_callbacks": {},
}


def test_fields_and_defaults_are_hugging_faces() -> None:
    """TrainerState has exactly the v5 fields with the v5 defaults."""
    assert dataclasses.asdict(TrainerState()) == HF_FIELDS


def test_control_flags_resets_and_state() -> None:
    """The five flags default to False; the _new_* helpers clear their group; state() exports."""
    control = TrainerControl(
        should_training_stop=True,
        should_epoch_stop=True,
        should_save=True,
        should_evaluate=True,
        should_log=True,
    )
    control._new_step()
    assert (control.should_save, control.should_evaluate, control.should_log) == (False,) * 3
    control._new_epoch()
    assert not control.should_epoch_stop and control.should_training_stop
    control._new_training()
    assert control == TrainerControl()
    exported = TrainerControl(should_save=True).state()
    assert exported["attributes"] == {}
    assert exported["args"]["should_save"] and len(exported["args"]) == 5
    assert TrainerControl.from_state(exported) == TrainerControl(should_save=True)


@pytest.mark.parametrize(
    ("value", "max_steps", "expected"),
    [(0.05, 1000, 50), (0.001, 100, 1), (0.3, 7, 3), (20, 1000, 20), (1.0, 40, 1)],
)
def test_compute_steps_resolves_ratios_with_ceil(
    value: float, max_steps: int, expected: int
) -> None:
    """Intervals below 1 are a ratio of max_steps rounded up; others are taken as they are."""
    args = TrainingArguments(logging_steps=value, save_steps=value)
    state = TrainerState()
    state.compute_steps(args, max_steps)
    assert (state.logging_steps, state.save_steps) == (expected, expected)
    assert state.eval_steps == 500  # eval_steps None leaves the default


def test_init_training_references_refreshes_run_values() -> None:
    """max_steps, epochs, process-zero flags and trial params come from the live trainer."""

    class FakeTrainer:
        def __init__(self) -> None:
            self._trial = {"lr": 0.1}

        def hp_name(self, trial: dict[str, float]) -> str:
            return f"trial-{trial['lr']}"

        def is_local_process_zero(self) -> bool:
            return True

        def is_world_process_zero(self) -> bool:
            return False

    state = TrainerState(max_steps=3, trial_params={"old": 1})
    state.init_training_references(FakeTrainer(), 120, 4, {"lr": 0.1})
    assert (state.max_steps, state.num_train_epochs) == (120, 4)
    assert (state.is_local_process_zero, state.is_world_process_zero) == (True, False)
    assert (state.trial_name, state.trial_params) == ("trial-0.1", {"lr": 0.1})
    state.init_training_references(FakeTrainer(), 120, 4, None)
    assert state.trial_params is None


def test_save_to_json_format(tmp_path: Path) -> None:
    """trainer_state.json is 2-space indented, key-sorted, newline-terminated, fields only."""
    state = TrainerState(global_step=7, epoch=0.5, log_history=[{"loss": 1.5, "step": 7}])
    path = tmp_path / "trainer_state.json"
    state.save_to_json(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert set(data) == set(HF_FIELDS)
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.json"]
    assert TrainerState.load_from_json(path) == state


def test_load_tolerates_unknown_keys_with_a_warning(tmp_path: Path) -> None:
    """Keys from a newer writer are ignored with one warning; missing keys take defaults."""
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 9, "future_field": 1}), encoding="utf-8")
    with capture_logs() as logs:
        state = TrainerState.load_from_json(path)
    assert state.global_step == 9 and state.log_history == []
    assert [entry.get("keys") for entry in logs] == [["future_field"]]


def test_snapshot_from_objects_and_refresh_without_growth() -> None:
    """A list of objects snapshots by class name; duplicates become a list that never grows."""
    first, second = EarlyStoppingCallback(2), EarlyStoppingCallback(5)
    control = TrainerControl()
    # Hugging Face's constructor takes the live objects too (typed as the stored dict).
    state = TrainerState(stateful_callbacks=[first, second, control])  # type: ignore[arg-type]
    stored = state.stateful_callbacks
    assert [s["args"]["early_stopping_patience"] for s in stored["EarlyStoppingCallback"]] == [2, 5]
    assert stored["TrainerControl"] == control.state()
    for counter in range(3):
        first.early_stopping_patience_counter = counter
        state.record_callback_states([first, second, control])
    saved = state.stateful_callbacks["EarlyStoppingCallback"]
    assert len(saved) == 2
    assert saved[0]["attributes"]["early_stopping_patience_counter"] == 2


def test_non_exportable_objects_are_refused() -> None:
    """Snapshotting an object without exportable state raises TypeError naming its class."""
    with pytest.raises(TypeError, match="PrinterCallback is not an ExportableState"):
        TrainerState().record_callback_states([PrinterCallback()])


def test_restore_rebuilds_callbacks_and_control(tmp_path: Path) -> None:
    """Restoring replaces stateful callbacks (moved to the end) and the control; unknowns warn."""
    early = EarlyStoppingCallback(3)
    early.early_stopping_patience_counter = 2
    state = TrainerState()
    state.record_callback_states([early, TrainerControl(should_save=True)])
    state.stateful_callbacks["GoneCallback"] = {"args": {}, "attributes": {}}
    path = tmp_path / "trainer_state.json"
    state.save_to_json(path)
    stored: dict[str, Any] = TrainerState.load_from_json(path).stateful_callbacks

    printer = PrinterCallback()
    handler = CallbackHandler([DefaultFlowCallback, EarlyStoppingCallback(1), printer])
    with capture_logs() as logs:
        control = restore_callback_states(stored, handler, TrainerControl())
    assert control == TrainerControl(should_save=True)
    restored = handler.callbacks[-1]
    assert [type(cb) for cb in handler.callbacks[:2]] == [DefaultFlowCallback, PrinterCallback]
    assert isinstance(restored, EarlyStoppingCallback)
    assert (restored.early_stopping_patience, restored.early_stopping_patience_counter) == (3, 2)
    assert any(entry.get("callbacks") == ["GoneCallback"] for entry in logs)
