"""The model contract, the prediction loop shared by ``evaluate()`` and ``predict()``, and metrics.

The contract is Hugging Face's: ``model(**batch)`` returns the loss as ``out["loss"]``,
``out.loss`` or ``out[0]`` when the batch holds labels; the remaining outputs are the logits.

The prediction loop, in Hugging Face's order::

    model.eval()
    for batch (one read ahead, so the last one is known):
        loss, logits, labels = trainer.prediction_step(model, batch, loss_only, ignore_keys)
        loss repeated eval_batch_size times; the last batch cut to what the data set holds
        logits = preprocess_logits_for_metrics(logits, labels)    # when given
        collect losses, logits, labels (and inputs: include_for_metrics)
        PredictionStep
        batch_eval_metrics:    compute_metrics(this batch, compute_result=last)
        eval_accumulation_steps: every n batches, move what was collected to NumPy
    compute_metrics(everything), {prefix}_loss = mean of the finite losses, keys prefixed

Batches of different sequence lengths are joined by padding with -100
(``trainbus.trainer._gather``).

With several ranks each reads its share of the batches (``trainbus.trainer._samplers``'
``EvaluationShard``), and after each step's forward pass (and ``preprocess_logits_for_metrics``)
the ranks' results are gathered, padded to the widest, into the single-process order; filler
rows are dropped. Everything after the gather (collection, ``batch_eval_metrics``,
``eval_accumulation_steps``, ``compute_metrics``, ``{prefix}_loss``) runs on the whole set's
arrays, alike on every rank, so every rank returns the metrics and predictions one process
evaluating the whole set would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import MetricValue
from trainbus.trainer._data import move_to_device
from trainbus.trainer._gather import (
    BatchStore,
    batch_size_of,
    gather_rows,
    nested_detach,
    nested_truncate,
)
from trainbus.trainer._samplers import EvaluationShard

if TYPE_CHECKING:
    from trainbus.trainer._trainer_evaluation import EvaluationMixin

__all__ = [
    "EvalLoopOutput",
    "EvalPrediction",
    "PredictionOutput",
    "TrainOutput",
    "default_ignore_keys",
    "evaluation_loop",
    "extract_loss",
    "loader_shard",
    "metric_value",
    "output_logits",
    "plain_metrics",
    "speed_metrics",
]

Arrays = np.ndarray[Any, Any] | tuple[np.ndarray[Any, Any], ...]


class EvalPrediction:
    """What ``compute_metrics`` receives; unpacks as ``predictions, label_ids`` like HF's, with
    ``inputs`` and then ``losses`` after them when ``include_for_metrics`` asks for them."""

    def __init__(
        self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None
    ) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        extras = tuple(value for value in (inputs, losses) if value is not None)
        self._elements: tuple[Any, ...] = (predictions, label_ids, *extras)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._elements)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self._elements):
            raise IndexError("tuple index out of range")
        return self._elements[index]


class EvalLoopOutput(NamedTuple):
    """Everything one pass over an evaluation set produced."""

    predictions: Any
    label_ids: Any
    metrics: dict[str, Any]
    num_samples: int


class PredictionOutput(NamedTuple):
    """What ``Trainer.predict`` returns."""

    predictions: Any
    label_ids: Any
    metrics: dict[str, Any]


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


def default_ignore_keys(model: nn.Module) -> list[str]:
    """Outputs left out of the predictions unless ``ignore_keys`` is given: the model config's
    ``keys_to_ignore_at_inference`` (a cache, say), as in Hugging Face."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    return list(getattr(config, "keys_to_ignore_at_inference", ["cache"]))


def output_logits(outputs: Any, *, has_loss: bool, ignore_keys: Iterable[str]) -> Any:
    """The predictions among a forward pass's ``outputs``: every output but the loss and the
    ignored keys, detached; a single one on its own, several as a tuple, none as ``None``."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, Mapping):
        skipped = {*ignore_keys, "loss"} if has_loss else set(ignore_keys)
        logits: Any = tuple(value for key, value in outputs.items() if key not in skipped)
    elif isinstance(outputs, tuple | list):
        logits = tuple(outputs[1:] if has_loss else outputs)
    else:  # an output object of the user's own
        found = getattr(outputs, "logits", None)
        logits = () if found is None else (found,)
    logits = nested_detach(logits)
    if not logits:
        return None
    return logits[0] if len(logits) == 1 else logits


def _with_last(batches: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """Each batch with whether it is the last; the next batch is read before one is handed out,
    as Hugging Face's loader does."""
    iterator = iter(batches)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def _length(value: object) -> int | None:
    try:
        return len(value)  # type: ignore[arg-type]  # whatever has one
    except (TypeError, NotImplementedError):
        return None


def _last_batch_cut(loader: DataLoader[Any]) -> int:
    """How many samples the last batch really holds when the data set does not fill it, else 0.

    Hugging Face repeats each batch's loss ``eval_batch_size`` times and cuts the last batch's
    results to the data set's remainder, so the mean loss weighs every sample once.
    """
    size, length = loader.batch_size, _length(loader.dataset)
    if size is None or length is None or loader.drop_last:
        return 0
    return length % size


class _Collected:
    """The four kinds of results one evaluation collects."""

    def __init__(self, concat: bool) -> None:
        self.losses = BatchStore(concat)
        self.predictions = BatchStore(concat)
        self.labels = BatchStore(concat)
        self.inputs = BatchStore(concat)

    def to_numpy(self) -> None:
        for store in (self.losses, self.predictions, self.labels, self.inputs):
            store.to_numpy()


def evaluation_loop(
    trainer: EvaluationMixin,
    dataloader: DataLoader[Any],
    *,
    description: str,
    prediction_loss_only: bool | None,
    ignore_keys: list[str] | None,
    prefix: str,
) -> EvalLoopOutput:
    """One pass of ``trainer.model`` over ``dataloader`` (see the module docstring)."""
    args, model = trainer.args, trainer.model
    loss_only = args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
    model.eval()
    optimizer_eval = getattr(trainer.optimizer, "eval", None)  # schedule-free optimizers
    if callable(optimizer_eval):
        optimizer_eval()
    trainer.callback_handler.eval_dataloader = dataloader
    collected = _Collected(args.eval_do_concat_batches)
    keep = not args.batch_eval_metrics or description == "Prediction"
    include, cut = args.include_for_metrics, _last_batch_cut(dataloader)
    input_name = getattr(model, "main_input_name", "input_ids")
    metrics: Mapping[str, Any] | None = None
    observed = 0
    shard = loader_shard(dataloader)
    for step, (inputs, last) in enumerate(_with_last(dataloader)):
        rows = (batch_size_of(inputs) or 0) if shard is None else shard.rows(step)
        observed += rows
        losses, logits, labels = trainer.prediction_step(
            model, inputs, loss_only, ignore_keys=ignore_keys
        )
        if losses is not None:  # one loss per sample, so the mean weighs every sample once
            losses = losses.repeat(args.eval_batch_size if shard is None else rows)
        decoded = None
        if "inputs" in include:
            decoded = move_to_device(_main_input(inputs, input_name), trainer.device)
        if logits is not None and trainer.preprocess_logits_for_metrics is not None:
            logits = trainer.preprocess_logits_for_metrics(logits, labels)
        losses, logits, labels, decoded = _as_one_process(
            (losses, logits, labels, decoded), shard, step, cut if last else 0, trainer.device
        )
        collected.losses.add(losses)
        if keep:
            collected.inputs.add(decoded)
            collected.predictions.add(logits)
            collected.labels.add(labels)
        trainer._prediction_step()
        if args.batch_eval_metrics:
            if trainer.compute_metrics is not None and logits is not None and labels is not None:
                batch = EvalPrediction(
                    logits,
                    labels,
                    inputs=(inputs if shard is None else decoded) if "inputs" in include else None,
                    losses=losses if "loss" in include else None,
                )
                metrics = trainer.compute_metrics(batch, compute_result=last)  # type: ignore[call-arg]
        elif args.eval_accumulation_steps and (step + 1) % args.eval_accumulation_steps == 0:
            collected.to_numpy()
    return _finish(trainer, collected, metrics, prefix, _num_samples(dataloader, observed))


def _as_one_process(
    results: tuple[Any, Any, Any, Any],
    shard: EvaluationShard | None,
    step: int,
    cut: int,
    device: torch.device,
) -> Any:
    """One step's losses, predictions, labels and inputs as one process evaluating the whole
    set has them: every rank's real rows in the data set's order (a collective), or, alone,
    the last batch ``cut`` to what the data set holds (``cut`` 0: as they are)."""
    if shard is not None:
        return gather_rows(results, shard.rows(step), shard.world_size, device)
    return nested_truncate(results, cut) if cut else results


def loader_shard(loader: DataLoader[Any]) -> EvaluationShard | None:
    """The rank split of ``loader``'s batches when it reads one rank's share of several, else
    ``None`` (one process, an iterable data set, or a loader of the user's own)."""
    shard = loader.batch_sampler
    if isinstance(shard, EvaluationShard) and shard.world_size > 1:
        return shard
    return None


def _main_input(inputs: Any, name: str) -> Any:
    if not isinstance(inputs, Mapping) or name not in inputs:
        keys = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise ConfigurationError(
            f"include_for_metrics 'inputs' needs batches holding the model's main input {name!r}, "
            f"got {keys}."
        )
    return inputs[name]


def _num_samples(loader: DataLoader[Any], observed: int) -> int:
    """The data set's length when it has one (else the samples seen), as Hugging Face counts."""
    length = _length(loader.dataset)
    if length is None:
        return observed
    return observed if length == 0 and observed > 0 else length


def _finish(
    trainer: EvaluationMixin,
    collected: _Collected,
    metrics: Mapping[str, Any] | None,
    prefix: str,
    num_samples: int,
) -> EvalLoopOutput:
    """Metrics over everything collected, then ``{prefix}_loss``, then the prefix on every key."""
    args = trainer.args
    losses = collected.losses.arrays()
    predictions = collected.predictions.arrays()
    labels = collected.labels.arrays()
    inputs = collected.inputs.arrays()
    if (
        trainer.compute_metrics is not None
        and predictions is not None
        and labels is not None
        and not args.batch_eval_metrics
    ):
        extras = {
            "inputs": inputs if "inputs" in args.include_for_metrics else None,
            "losses": losses if "loss" in args.include_for_metrics else None,
        }
        metrics = trainer.compute_metrics(EvalPrediction(predictions, labels, **extras))
    result: dict[str, Any] = _plain_numbers(dict(metrics or {}))
    if isinstance(losses, list):
        losses = np.concatenate(losses) if losses else None
    if isinstance(losses, np.ndarray):
        finite = np.isfinite(losses)
        if args.logging_nan_inf_filter and finite.any():
            losses = losses[finite]
        result[f"{prefix}_loss"] = losses.mean().item()
    return EvalLoopOutput(predictions, labels, _prefixed(result, prefix), num_samples)


def _plain_numbers(value: Any) -> Any:
    """NumPy and one-element tensor values (nested too) as Python numbers, for JSON."""
    if isinstance(value, list | tuple):
        return type(value)(_plain_numbers(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain_numbers(item) for key, item in value.items()}
    return metric_value(value)


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
