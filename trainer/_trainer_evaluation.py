"""The ``Trainer``'s evaluation and prediction: ``evaluate``, ``predict`` and their seams.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of, each a mixin holding one
idea of transformers' public API. This one runs a prediction pass inside a run (opening one when
called outside ``train()``), logs and publishes its metrics and fires ``on_evaluate`` or
``on_predict``. The pass itself is ``trainbus.trainer._evaluation``'s, which calls back the
overridable ``prediction_step`` here; the forward and its loss are the training step's
(``_evaluation_forward``, in ``trainbus.trainer._trainer_loss``). The attributes and methods it
uses from the other parts are declared here for the type checker.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Evaluate, EventBase, Predict, PredictionStep
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._data import move_to_device
from trainbus.trainer._evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionOutput,
    default_ignore_keys,
    evaluation_loop,
    loader_shard,
    output_logits,
    plain_metrics,
    speed_metrics,
)
from trainbus.trainer._gather import nested_detach
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._precision import Precision
from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["EvalData", "EvaluationMixin", "LogitsPreprocessor"]

T = TypeVar("T")
LogitsPreprocessor = Callable[[Any, Any], Any]
"""``preprocess_logits_for_metrics(logits, labels)``: what to keep of each batch's logits."""
EvalData = Dataset[Any] | Mapping[str, Dataset[Any]]


class EvaluationMixin:
    """``evaluate``, ``predict``, ``evaluation_loop`` and ``prediction_step`` of a ``Trainer``."""

    args: TrainingArguments
    model: nn.Module
    device: torch.device
    precision: Precision
    is_in_train: bool
    eval_dataset: EvalData | None
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]] | None
    preprocess_logits_for_metrics: LogitsPreprocessor | None
    label_names: list[str]
    can_return_loss: bool
    optimizer: torch.optim.Optimizer | None
    callback_handler: CallbackHandler
    state: TrainerState
    control: TrainerControl
    _bus: Bus | None

    if TYPE_CHECKING:  # the Trainer's own (runs and events) and its other parts'

        def _run_blocking(self, body: Callable[[], T]) -> T: ...
        def _publish(self, event_type: type[EventBase], **fields: Any) -> None: ...
        def get_eval_dataloader(
            self, eval_dataset: Dataset[Any] | str | None = None
        ) -> DataLoader[Any]: ...
        def get_test_dataloader(self, test_dataset: Dataset[Any]) -> DataLoader[Any]: ...
        def log(self, logs: dict[str, Any], start_time: float | None = None) -> None: ...
        def _evaluation_forward(
            self, model: nn.Module, batch: dict[str, Any], has_labels: bool
        ) -> tuple[torch.Tensor | None, Any]: ...

    def evaluate(
        self,
        eval_dataset: EvalData | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, Any]:
        """Evaluate, log the metrics and fire ``on_evaluate``; returns the metrics.

        Parameters:
            eval_dataset: the data set to evaluate instead of the trainer's; a dict of them (or a
                trainer's dict, when none is given) evaluates each, with ``eval_<name>_`` keys;
                a string names one data set of the trainer's dict.
            ignore_keys: model outputs (of a dict output) left out of the predictions; the
                default is the model config's ``keys_to_ignore_at_inference``.
            metric_key_prefix: the prefix of every metric key (``eval_loss``).
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ConfigurationError("evaluate() needs an eval_dataset (argument or Trainer(...))")
        if self._bus is None:  # outside a run: open one around this call (an override of
            # evaluate() has run its own part already; only this one runs again inside)
            body = functools.partial(
                EvaluationMixin.evaluate, self, eval_dataset, ignore_keys, metric_key_prefix
            )
            return self._run_blocking(body)
        if isinstance(eval_dataset, Mapping) or (
            eval_dataset is None and isinstance(self.eval_dataset, Mapping)
        ):
            override = eval_dataset is not None
            datasets = eval_dataset if isinstance(eval_dataset, Mapping) else self.eval_dataset
            assert isinstance(datasets, Mapping)  # the condition above
            metrics: dict[str, Any] = {}
            for name, part in datasets.items():
                metrics.update(
                    self.evaluate(
                        part if override else name, ignore_keys, f"{metric_key_prefix}_{name}"
                    )
                )
            return metrics
        loader = self.get_eval_dataloader(eval_dataset)
        output = self._prediction_pass(
            loader,
            "Evaluation",
            # without compute_metrics there is nothing to gather predictions for
            prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )
        self.log(output.metrics)
        self._publish(Evaluate, metrics=plain_metrics(output.metrics))
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, output.metrics
        )
        return output.metrics

    def predict(
        self,
        test_dataset: Dataset[Any],
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Predictions, labels and metrics over ``test_dataset``; fires ``on_predict``, no log.

        Predictions of batches with different sequence lengths are padded with -100 to the
        longest and concatenated. ``ignore_keys`` and ``metric_key_prefix`` are as in
        ``evaluate()``.
        """
        if self._bus is None:  # outside a run: open one around this call, as evaluate() does
            body = functools.partial(
                EvaluationMixin.predict, self, test_dataset, ignore_keys, metric_key_prefix
            )
            return self._run_blocking(body)
        output = self._prediction_pass(
            self.get_test_dataloader(test_dataset),
            "Prediction",
            prediction_loss_only=None,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )
        self._publish(Predict, metrics=plain_metrics(output.metrics))
        self.control = self.callback_handler.on_predict(
            self.args, self.state, self.control, output.metrics
        )
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def evaluation_loop(
        self,
        dataloader: DataLoader[Any],
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """One pass over ``dataloader``, shared by ``evaluate()`` and ``predict()``.

        Parameters:
            dataloader: the batches.
            description: ``"Evaluation"`` or ``"Prediction"`` (with ``batch_eval_metrics``,
                prediction still keeps every batch's predictions).
            prediction_loss_only: collect only losses; ``None`` means
                ``args.prediction_loss_only``.
            ignore_keys: as in ``evaluate()``.
            metric_key_prefix: as in ``evaluate()``.
        """
        return evaluation_loop(
            self,
            dataloader,
            description=description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """The loss, logits and labels of one evaluation batch (each may be ``None``).

        Parameters:
            model: the model to run (``self.model``).
            inputs: the batch, as the collator made it; moved to the device here.
            prediction_loss_only: return the loss alone.
            ignore_keys: model outputs left out of the logits (see ``evaluate()``).

        A loss is computed when the batch holds every label name (or the model has no labels
        and returns a loss by default, ``return_loss=True``); labels are read before the
        forward pass, in case it consumes them.
        """
        names = self.label_names
        has_labels = bool(names) and all(inputs.get(name) is not None for name in names)
        return_loss = inputs.get("return_loss")
        if return_loss is None:
            return_loss = self.can_return_loss
        with_loss = has_labels or (not names and bool(return_loss))
        inputs = move_to_device(inputs, self.device)
        if ignore_keys is None:
            ignore_keys = default_ignore_keys(self.model)
        labels: Any = None
        if with_loss and names:
            found = nested_detach(tuple(inputs.get(name) for name in names))
            labels = found[0] if len(found) == 1 else found
        with torch.no_grad():  # the one forward pass of evaluation, autocast as training
            loss, outputs = self._evaluation_forward(model, inputs, with_loss)
            if loss is not None:
                loss = loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        return loss, output_logits(outputs, has_loss=with_loss, ignore_keys=ignore_keys), labels

    def _prediction_pass(
        self,
        loader: DataLoader[Any],
        description: str,
        *,
        prediction_loss_only: bool | None,
        ignore_keys: list[str] | None,
        prefix: str,
    ) -> EvalLoopOutput:
        """``evaluation_loop``, then the speed metrics. A step is one batch on every rank, so
        with the set split between ranks (``loader_shard``) a step covers ``eval_batch_size``
        samples per rank, as transformers counts them."""
        start_time = time.time()
        self.precision.prepare_evaluation(self.model, in_train=self.is_in_train)
        output = self.evaluation_loop(
            loader, description, prediction_loss_only, ignore_keys, prefix
        )
        shard = loader_shard(loader)
        per_step = self.args.eval_batch_size * (1 if shard is None else shard.world_size)
        steps = math.ceil(output.num_samples / per_step)
        output.metrics.update(
            speed_metrics(prefix, start_time, num_samples=output.num_samples, num_steps=steps)
        )
        return output

    def _prediction_step(self) -> None:
        self._publish(PredictionStep)
        self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
