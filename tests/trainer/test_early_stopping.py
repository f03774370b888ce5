"""EarlyStoppingCallback: patience, threshold, direction, missing metrics, state, bad settings."""

from __future__ import annotations

import operator
from typing import Any

import pytest
from structlog.testing import capture_logs

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._early_stopping import EarlyStoppingCallback
from trainbus.trainer._state import TrainerControl, TrainerState


def evaluate_sequence(
    callback: EarlyStoppingCallback, args: TrainingArguments, values: list[float]
) -> list[tuple[int, bool]]:
    """Feed evaluations as the trainer does: on_evaluate first, best_metric updated after."""
    state, seen = TrainerState(), []
    better = operator.gt if args.greater_is_better else operator.lt
    for value in values:
        control = TrainerControl()
        callback.on_evaluate(args, state, control, metrics={"eval_loss": value, "eval_acc": value})
        seen.append((callback.early_stopping_patience_counter, control.should_training_stop))
        if state.best_metric is None or better(value, state.best_metric):
            state.best_metric = value
    return seen


def loss_args(**kwargs: Any) -> TrainingArguments:
    return TrainingArguments(
        eval_strategy="steps", eval_steps=10, load_best_model_at_end=True, **kwargs
    )


def test_stops_after_patience_evaluations_without_improvement() -> None:
    """The counter resets on improvement and stopping is requested when it reaches patience."""
    seen = evaluate_sequence(EarlyStoppingCallback(2), loss_args(), [1.0, 0.9, 0.95, 0.8, 0.9, 0.9])
    assert seen == [(0, False), (0, False), (1, False), (0, False), (1, False), (2, True)]


def test_threshold_requires_a_large_enough_gain() -> None:
    """A gain not above early_stopping_threshold counts as no improvement."""
    seen = evaluate_sequence(EarlyStoppingCallback(3, 0.1), loss_args(), [1.0, 0.95, 0.85, 0.5])
    assert [counter for counter, _ in seen] == [0, 1, 2, 0]


def test_greater_is_better_direction() -> None:
    """With a metric where higher is better, a rising value is an improvement."""
    args = loss_args(metric_for_best_model="acc")
    assert args.greater_is_better
    seen = evaluate_sequence(EarlyStoppingCallback(1), args, [0.5, 0.6, 0.55])
    assert seen == [(0, False), (0, False), (1, True)]


def test_missing_metric_warns_and_changes_nothing() -> None:
    """A metric absent from the evaluation warns (naming it) and leaves the counter alone."""
    callback = EarlyStoppingCallback(1)
    callback.early_stopping_patience_counter = 0
    args = loss_args(metric_for_best_model="f1")
    control = TrainerControl()
    with capture_logs() as logs:
        callback.on_evaluate(args, TrainerState(best_metric=1.0), control, metrics={"eval_loss": 1})
    assert callback.early_stopping_patience_counter == 0 and not control.should_training_stop
    assert "did not find eval_f1 so early stopping is disabled" in logs[0]["event"]


def test_train_begin_checks_configuration() -> None:
    """on_train_begin warns without load_best_model_at_end; refuses no metric or no evaluation."""
    callback = EarlyStoppingCallback()
    with capture_logs() as logs:
        callback.on_train_begin(
            TrainingArguments(eval_strategy="epoch", metric_for_best_model="loss"),
            TrainerState(),
            TrainerControl(),
        )
    assert "without load_best_model_at_end=True" in logs[0]["event"]
    no_metric = TrainingArguments(eval_strategy="epoch")
    with pytest.raises(ConfigurationError, match="metric_for_best_model"):
        callback.on_train_begin(no_metric, TrainerState(), TrainerControl())
    no_eval = TrainingArguments(metric_for_best_model="loss")
    with pytest.raises(ConfigurationError, match="eval_strategy"):
        callback.on_train_begin(no_eval, TrainerState(), TrainerControl())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_patience": 1.5}, "early_stopping_patience"),
        ({"early_stopping_threshold": -0.1}, "early_stopping_threshold"),
    ],
)
def test_bad_settings_raise_value_errors(kwargs: dict[str, Any], field: str) -> None:
    """Invalid patience or threshold raise a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=field):
        EarlyStoppingCallback(**kwargs)


def test_state_round_trip() -> None:
    """state() holds args and the counter; from_state rebuilds an equal callback."""
    callback = EarlyStoppingCallback(4, 0.01)
    callback.early_stopping_patience_counter = 3
    assert callback.state() == {
        "args": {"early_stopping_patience": 4, "early_stopping_threshold": 0.01},
        "attributes": {"early_stopping_patience_counter": 3},
    }
    restored = EarlyStoppingCallback.from_state(callback.state())
    assert restored.state() == callback.state()
