"""`EarlyStoppingCallback`: stop when the tracked metric stops improving, across resumes too.

It only reads ``state.best_metric``, which the trainer updates after every ``on_evaluate``, so an
evaluation is compared with the best of the earlier ones. Its patience counter is checkpointed
(`ExportableState`) and restored when ``restore_callback_states_from_checkpoint`` is set. Bad
configuration raises `ConfigurationError` where Hugging Face asserts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._state import ExportableState

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["EarlyStoppingCallback"]

_log = structlog.get_logger(__name__)


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Raise ``should_training_stop`` after ``early_stopping_patience`` evaluations without gain.

    An evaluation improves when there is no best metric yet, or when its value beats
    ``state.best_metric`` in the ``greater_is_better`` direction by more than
    ``early_stopping_threshold``.
    """

    def __init__(
        self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0
    ) -> None:
        if (
            isinstance(early_stopping_patience, bool)
            or not isinstance(early_stopping_patience, int)
            or early_stopping_patience < 1
        ):
            raise ConfigurationError(
                "early_stopping_patience must be a positive integer (evaluations without "
                f"improvement before stopping), got {early_stopping_patience!r}."
            )
        threshold = 0.0 if early_stopping_threshold is None else early_stopping_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
            raise ConfigurationError(
                f"early_stopping_threshold must be a number >= 0, got {early_stopping_threshold!r}."
            )
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = float(threshold)
        self.early_stopping_patience_counter = 0

    def check_metric_value(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metric_value: float,
    ) -> None:
        """Reset the counter on an improvement, else count one more evaluation without one."""
        best = state.best_metric
        if best is None:
            improved = True
        else:
            better = metric_value > best if args.greater_is_better else metric_value < best
            improved = better and abs(metric_value - best) > self.early_stopping_threshold
        if improved:
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not args.load_best_model_at_end:
            _log.warning(
                "Using EarlyStoppingCallback without load_best_model_at_end=True. Once training "
                "is finished, the best model will not be loaded automatically."
            )
        if args.metric_for_best_model is None:
            raise ConfigurationError(
                "EarlyStoppingCallback needs metric_for_best_model to name the metric to watch "
                "(for example 'loss' or 'accuracy'), got None."
            )
        if args.eval_strategy == "no":
            raise ConfigurationError(
                "EarlyStoppingCallback needs evaluations: set eval_strategy to 'steps' or "
                "'epoch', got 'no'."
            )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = args.metric_for_best_model or "loss"
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        metrics = metrics or {}
        value = metrics.get(name)
        if value is None:
            _log.warning(
                f"early stopping required metric_for_best_model, but did not find {name} so "
                "early stopping is disabled",
                available=sorted(metrics),
            )
            return
        value = float(value)
        if math.isnan(value):
            _log.warning("early_stopping_metric_is_nan", metric=name)
        self.check_metric_value(args, state, control, value)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {
                "early_stopping_patience_counter": self.early_stopping_patience_counter,
            },
        }
