"""Interop with transformers: trainer_state.json both ways, callback state shapes, flow rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._early_stopping import EarlyStoppingCallback
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._state import TrainerControl, TrainerState, restore_callback_states

hf: Any = pytest.importorskip("transformers")


def filled_state() -> TrainerState:
    """A state as a run leaves it: history, best metric, and two stateful objects."""
    early = EarlyStoppingCallback(3, 0.01)
    early.early_stopping_patience_counter = 2
    state = TrainerState(
        epoch=1.5,
        global_step=30,
        max_steps=60,
        logging_steps=10,
        eval_steps=10,
        save_steps=10,
        train_batch_size=8,
        num_train_epochs=3,
        total_flos=1234.5,
        log_history=[
            {"loss": 0.75, "grad_norm": 1.25, "learning_rate": 5e-5, "epoch": 0.5, "step": 10},
            {"eval_loss": 0.5, "eval_runtime": 0.1, "epoch": 1.0, "step": 20},
        ],
        best_metric=0.5,
        best_global_step=20,
        best_model_checkpoint="out/checkpoint-20",
    )
    state.record_callback_states([early, TrainerControl(should_save=True)])
    return state


def test_our_trainer_state_json_loads_in_transformers(tmp_path: Path) -> None:
    """transformers' TrainerState.load_from_json reads our file into the same values."""
    ours = filled_state()
    path = tmp_path / "trainer_state.json"
    ours.save_to_json(path)
    theirs = hf.TrainerState.load_from_json(str(path))
    assert dataclasses.asdict(theirs) == dataclasses.asdict(ours)


def test_their_trainer_state_json_loads_in_ours_byte_for_byte(tmp_path: Path) -> None:
    """A transformers file with stateful callbacks loads in ours and re-saves byte for byte."""
    early = hf.EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=0.01)
    early.early_stopping_patience_counter = 2
    fields = dataclasses.asdict(filled_state())
    fields["stateful_callbacks"] = [early, hf.TrainerControl(should_save=True)]
    theirs = hf.TrainerState(**fields)
    their_path, our_path = tmp_path / "theirs.json", tmp_path / "ours.json"
    theirs.save_to_json(str(their_path))
    ours = TrainerState.load_from_json(their_path)
    assert ours == filled_state()
    ours.save_to_json(our_path)
    assert our_path.read_bytes() == their_path.read_bytes()


def test_stateful_callback_shapes_match() -> None:
    """EarlyStoppingCallback and TrainerControl export the same state as transformers' classes."""
    theirs, ours = hf.EarlyStoppingCallback(4, 0.2), EarlyStoppingCallback(4, 0.2)
    theirs.early_stopping_patience_counter = ours.early_stopping_patience_counter = 1
    assert ours.state() == theirs.state()
    flags = {"should_save": True, "should_training_stop": True}
    assert TrainerControl(**flags).state() == hf.TrainerControl(**flags).state()
    assert isinstance(hf.DefaultFlowCallback(), hf.trainer_callback.ExportableState) is False
    assert "state" not in vars(DefaultFlowCallback)


def test_transformers_checkpoint_restores_our_callbacks(tmp_path: Path) -> None:
    """Callback states saved by transformers restore into our EarlyStoppingCallback and control."""
    early = hf.EarlyStoppingCallback(early_stopping_patience=5)
    early.early_stopping_patience_counter = 4
    theirs = hf.TrainerState(stateful_callbacks=[early, hf.TrainerControl(should_log=True)])
    path = tmp_path / "trainer_state.json"
    theirs.save_to_json(str(path))
    handler = CallbackHandler([DefaultFlowCallback, EarlyStoppingCallback(1)])
    stored = TrainerState.load_from_json(path).stateful_callbacks
    control = restore_callback_states(stored, handler, TrainerControl())
    restored = handler.callbacks[-1]
    assert control == TrainerControl(should_log=True)
    assert isinstance(restored, EarlyStoppingCallback)
    assert (restored.early_stopping_patience, restored.early_stopping_patience_counter) == (5, 4)


def test_transformers_early_stopping_runs_in_our_handler() -> None:
    """transformers' own EarlyStoppingCallback works unchanged against our args/state/control."""
    args = TrainingArguments(eval_strategy="steps", eval_steps=5, metric_for_best_model="loss")
    handler = CallbackHandler([DefaultFlowCallback, hf.EarlyStoppingCallback(1)])
    state, control = TrainerState(best_metric=0.5), TrainerControl()
    control = handler.on_evaluate(args, state, control, {"eval_loss": 0.7})
    assert control.should_training_stop


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from(["no", "steps", "epoch"]),
    save=st.sampled_from(["no", "steps", "epoch"]),
    interval=st.integers(1, 30),
    first=st.booleans(),
    delay=st.integers(0, 20),
    step=st.integers(1, 80),
    max_steps=st.integers(1, 80),
    epoch=st.floats(0, 4, allow_nan=False),
)
def test_flow_decisions_equal_transformers(
    strategy: str,
    save: str,
    interval: int,
    first: bool,
    delay: int,
    step: int,
    max_steps: int,
    epoch: float,
) -> None:
    """Our DefaultFlowCallback raises the same flags as transformers' on the same inputs."""
    args = TrainingArguments(
        logging_strategy=strategy,
        logging_steps=interval,
        logging_first_step=first,
        eval_strategy=strategy,
        eval_steps=interval + 1,
        eval_delay=delay,
        save_strategy=save,
        save_steps=interval + 2,
    )
    state = TrainerState(global_step=step, epoch=epoch, max_steps=max_steps)
    state.compute_steps(args, max_steps)
    for hook in ("on_step_end", "on_epoch_end"):
        ours = getattr(DefaultFlowCallback(), hook)(args, state, TrainerControl())
        theirs = getattr(hf.DefaultFlowCallback(), hook)(args, state, hf.TrainerControl())
        assert ours.state() == theirs.state()
