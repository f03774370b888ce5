"""The model contract, the prediction loop shared by ``evaluate()`` and ``predict()``, and metrics.

The contract is Hugging Face's: ``model(**batch)`` returns the loss as ``out["loss"]``,
``out.loss`` or ``out[0]`` when the batch holds labels; the remaining outputs are the logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NamedTuple

import numpy as np
import torch
from torch import nn

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import MetricValue
from trainbus.trainer._data import move_to_device

__all__ = [
    "EvalLoopOutput",
    "EvalPrediction",
    "PredictionOutput",
    "TrainOutput",
    "extract_loss",
    "metric_value",
    "plain_metrics",
    "prediction_loop",
    "speed_metrics",
]


class EvalPrediction(NamedTuple):
    """What ``compute_metrics`` receives; unpacks as ``predictions, label_ids`` like HF's."""

    predictions: np.ndarray[Any, Any] | tuple[np.ndarray[Any, Any], ...]
    label_ids: np.ndarray[Any, Any] | None


class EvalLoopOutput(NamedTuple):
    """Everything one pass over an evaluation set produced."""

    predictions: np.ndarray[Any, Any] | tuple[np.ndarray[Any, Any], ...] | None
    label_ids: np.ndarray[Any, Any] | None
    metrics: dict[str, Any]
    num_samples: int
    num_batches: int


class PredictionOutput(NamedTuple):
    """What ``Trainer.predict`` returns."""

    predictions: np.ndarray[Any, Any] | tuple[np.ndarray[Any, Any], ...] | None
    label_ids: np.ndarray[Any, Any] | None
    metrics: dict[str, Any]


EvalForward = Callable[[dict[str, Any], bool], tuple[torch.Tensor | None, Any]]
"""``(batch, has_labels) -> (loss, outputs)``: one evaluation batch through the trainer's loss."""


class TrainOutput(NamedTuple):
    """What ``Trainer.train`` returns."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any]


def _no_loss_error(outputs: object, batch: Mapping[str, Any]) -> ConfigurationError:
    keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
    return ConfigurationError(
        "The model did not return a loss: model(**batch) must return it as out['loss'], "
        f"out.loss or out[0] when labels are given. It returned {keys} for inputs "
        f"{sorted(batch)}."
    )


def extract_loss(outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """The loss of a forward pass, or a `ConfigurationError` naming what the model returned."""
    if type(outputs) is dict or isinstance(outputs, Mapping):  # dict first: no ABC check per step
        loss = outputs.get("loss")
    elif isinstance(outputs, tuple | list):
        loss = outputs[0] if outputs else None
    else:
        loss = getattr(outputs, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise _no_loss_error(outputs, batch)
    return loss


def _logits(outputs: Any, has_loss: bool) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, Mapping):
        values = [value for key, value in outputs.items() if key != "loss"]
    elif isinstance(outputs, tuple | list):
        values = list(outputs[1:] if has_loss else outputs)
    else:
        logits = getattr(outputs, "logits", None)
        values = [logits] if logits is not None else []
    return tuple(value for value in values if isinstance(value, torch.Tensor))


def _concat(chunks: list[tuple[torch.Tensor, ...]]) -> Any:
    if not chunks or not chunks[0]:
        return None
    columns = [torch.cat([chunk[i] for chunk in chunks]).numpy() for i in range(len(chunks[0]))]
    return columns[0] if len(columns) == 1 else tuple(columns)


def prediction_loop(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: torch.device,
    label_names: list[str],
    prefix: str,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]] | None,
    nan_inf_filter: bool,
    after_batch: Callable[[], None],
    forward: EvalForward | None = None,
) -> EvalLoopOutput:
    """Run ``model`` over ``batches`` without gradients; ``after_batch`` fires the step event.

    ``forward(batch, has_labels)`` returns ``(loss, outputs)`` of one batch (the loss ``None``
    without labels); without it the model's own outputs and loss are used.
    """
    model.eval()
    losses: list[torch.Tensor] = []
    logits: list[tuple[torch.Tensor, ...]] = []
    labels: list[torch.Tensor] = []
    num_samples = num_batches = 0
    with torch.no_grad():
        for raw in batches:
            batch = move_to_device(raw, device)
            has_labels = all(batch.get(name) is not None for name in label_names)
            if forward is None:
                outputs = model(**batch)
                loss = extract_loss(outputs, batch) if has_labels else None
            else:
                loss, outputs = forward(batch, has_labels)
            size = len(batch[label_names[0]]) if has_labels else 0
            if has_labels and loss is not None:
                losses.append(loss.detach().float().mean().reshape(1).cpu())
                losses[-1] = losses[-1].repeat(size)
                labels.append(batch[label_names[0]].detach().cpu())
            logits.append(tuple(t.detach().cpu() for t in _logits(outputs, has_labels)))
            num_samples += size or (len(logits[-1][0]) if logits[-1] else 0)
            num_batches += 1
            after_batch()
    predictions = _concat(logits)
    label_ids = torch.cat(labels).numpy() if labels else None
    metrics: dict[str, Any] = {}
    if compute_metrics is not None and predictions is not None and label_ids is not None:
        metrics.update(compute_metrics(EvalPrediction(predictions, label_ids)))
    if losses:
        all_losses = torch.cat(losses)
        if nan_inf_filter:
            all_losses = all_losses[torch.isfinite(all_losses)]
        metrics[f"{prefix}_loss"] = float(all_losses.mean()) if len(all_losses) else math.nan
    return EvalLoopOutput(
        predictions, label_ids, _prefixed(metrics, prefix), num_samples, num_batches
    )


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Prefix the keys as Hugging Face does, and in its order: keys that lack the prefix move
    behind those that have it (``eval_loss`` included), so logs list keys in the same order."""
    head = f"{prefix}_"
    ready = {key: metric_value(value) for key, value in metrics.items() if key.startswith(head)}
    renamed = {
        head + key: metric_value(value)
        for key, value in metrics.items()
        if not key.startswith(head)
    }
    return {**ready, **renamed}


def speed_metrics(
    prefix: str,
    start_time: float,
    *,
    num_samples: float | None = None,
    num_steps: int | None = None,
    num_tokens: int | None = None,
) -> dict[str, float]:
    """Runtime (4 decimals) and rates (3 decimals); rates are left out for a zero runtime."""
    runtime = time.time() - start_time
    result = {f"{prefix}_runtime": round(runtime, 4)}
    if runtime == 0:
        return result
    if num_samples is not None:
        result[f"{prefix}_samples_per_second"] = round(num_samples / runtime, 3)
    if num_steps is not None:
        result[f"{prefix}_steps_per_second"] = round(num_steps / runtime, 3)
    if num_tokens is not None:
        result[f"{prefix}_tokens_per_second"] = round(num_tokens / runtime, 3)
    return result


def metric_value(value: Any) -> Any:
    """NumPy and tensor scalars become Python numbers; anything else is returned unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


_PLAIN_TYPES: Final = (bool, int, float, str)


def plain_metrics(values: Mapping[str, Any]) -> dict[str, MetricValue]:
    """A copy fit for an event: numbers, strings, booleans and ``None``; others as text."""
    out: dict[str, MetricValue] = {}
    for key, value in values.items():
        if type(value) is not float:  # floats, the usual case, pass as they are
            value = metric_value(value)
            if not (value is None or isinstance(value, _PLAIN_TYPES)):
                value = str(value)
        out[key] = value
    return out
