"""The ``Trainer``'s training step: forward, loss and backward of one micro-batch, and its counts.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of, each a mixin holding one
idea of transformers' public API. This one is the seam between the loop and the model: the loop
(``trainbus.trainer._loop``) calls ``training_step`` per micro-batch and evaluation scores each
batch through the same ``compute_loss`` (``_evaluation_forward``), so an override of
``compute_loss`` or ``compute_loss_context_manager`` applies to both. What the loop counts for the
loss (label tokens, flops) is decided here once per run from the rules of
``trainbus.trainer._accounting``. ``model_init`` is here too: it is how the model itself is
made. The attributes it reads are the ``Trainer``'s, declared here for the type checker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal, overload

import torch
from torch import nn

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._accounting import count_label_items, flops_counter
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._data import move_to_device
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._evaluation import extract_loss
from trainbus.trainer._precision import Precision

__all__ = ["LossFunction", "LossMixin"]

LossFunction = Callable[..., torch.Tensor]
"""``compute_loss_func(outputs, labels, num_items_in_batch=...)``: the loss of one micro-batch."""


class LossMixin:
    """``training_step``, ``compute_loss`` and the seams around them, for a ``Trainer``."""

    args: TrainingArguments
    model: nn.Module
    device: torch.device
    precision: Precision
    model_init: Callable[..., nn.Module] | None
    compute_loss_func: LossFunction | None
    model_accepts_loss_kwargs: bool
    current_gradient_accumulation_steps: int
    _loss_shifts_labels: bool
    _dist: Distributed

    loss_is_scaled_for_ga: ClassVar[bool | None] = None
    """Whether ``compute_loss`` returns a loss already scaled for gradient accumulation: ``True``
    means ``training_step`` uses it as is, ``False`` that it divides it by the number of
    micro-batches of the update. ``None`` (the default) decides per step as Hugging Face does: the
    loss counts as scaled when it was divided by ``num_items_in_batch`` (by the model, which
    takes loss keyword arguments, or by ``compute_loss_func``). A subclass computing its own loss
    sets it."""

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its loss, detached, as scaled for the
        update (what the logged loss sums). Override it to do more around a step.

        Args:
            model: what to run (``model_wrapped``: the DDP wrapper when distributed).
            inputs: the micro-batch, as the collator made it; moved to the device here.
            num_items_in_batch: the label tokens of the whole update, when counted (see
                ``trainbus.trainer._accounting``); ``compute_loss`` divides by it.
        """
        if not (model.training and self.model.training):  # evaluation switched it off
            model.train()  # (train() walks every module: only when needed)
        inputs = move_to_device(inputs, self.device)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        del inputs
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = self.compute_loss_func is not None or (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            )
        if not scaled and self.current_gradient_accumulation_steps > 1:
            loss = loss / self.current_gradient_accumulation_steps
        self._backward(loss)
        return loss.detach()

    @overload
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: Literal[False] = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor: ...

    @overload
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: Literal[True],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, Any]: ...

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The loss of one micro-batch: the model's own, or ``compute_loss_func``'s.

        Args:
            model: what to run.
            inputs: the micro-batch on the device (left unchanged).
            return_outputs: return ``(loss, outputs)`` instead of the loss alone.
            num_items_in_batch: the label tokens of the whole update, passed on to a model
                that takes loss keyword arguments and to ``compute_loss_func``.

        With ``average_tokens_across_devices`` and several ranks, a loss divided by the count
        of every rank is multiplied by the number of ranks, since the gradient all-reduce
        averages: the update is then the mean over every rank's tokens.
        """
        labels = None
        if self.compute_loss_func is not None and "labels" in inputs:
            labels = inputs["labels"]
            inputs = {key: value for key, value in inputs.items() if key != "labels"}
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        else:
            loss = extract_loss(outputs, inputs)
        if (  # cheapest tests first: this runs on every micro-batch
            num_items_in_batch is not None
            and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
            and self.args.average_tokens_across_devices
            and self._dist.enabled
        ):
            loss = loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss

    def compute_loss_context_manager(self) -> AbstractContextManager[Any]:
        """The context a forward pass and its loss run in: autocast under ``bf16``/``fp16``.

        Entered around ``compute_loss`` in training and around the model in evaluation; override
        it to add a context of your own (transformers' seam of the same name).
        """
        return self.precision.autocast()

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss; scaled by the ``GradScaler`` under ``fp16``."""
        self.precision.backward(loss)

    def _evaluation_forward(
        self, model: nn.Module, batch: dict[str, Any], has_labels: bool
    ) -> tuple[torch.Tensor | None, Any]:
        """One evaluation batch as Hugging Face's ``prediction_step`` runs it: with labels,
        through ``compute_loss`` (so an override or ``compute_loss_func`` scores evaluation too)
        with this batch's own ``num_items_in_batch`` (``_evaluation_items``); without, the model
        alone."""
        with self.compute_loss_context_manager():
            if not has_labels:
                return None, model(**batch)
            num_items = self._evaluation_items(batch) if self._counts_items() else None
            loss, outputs = self.compute_loss(
                model, batch, return_outputs=True, num_items_in_batch=num_items
            )
        return loss, outputs

    def _evaluation_items(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The label tokens of one evaluation batch, times the number of ranks under
        ``average_tokens_across_devices``: ``compute_loss`` multiplies such a loss by the number
        of ranks, so each rank's loss is then its own batch's mean. Ranks evaluate different
        batches (and a rank's filler batch must not count), so nothing is summed across them,
        and the forward pass holds no collective."""
        count = count_label_items([batch], shift=self._loss_shifts_labels)
        if count is None:
            return None
        if self.args.average_tokens_across_devices and self._dist.enabled:
            count = count * self._dist.world_size
        return count.to(self.device, non_blocking=True)

    def _counts_items(self) -> bool:
        """Whether losses are divided by ``num_items_in_batch`` (see ``_accounting``)."""
        return bool(self.model_accepts_loss_kwargs) or self.compute_loss_func is not None

    def _num_items_in_batch(self, batches: Sequence[Any]) -> torch.Tensor | None:
        """The label tokens of ``batches`` (one update's micro-batches), summed over ranks with
        ``average_tokens_across_devices``, on the device.

        Whether batches are counted depends only on their keys, which every rank's collator
        makes alike, so every rank takes the all-reduce or none does.
        """
        count = count_label_items(batches, shift=self._loss_shifts_labels)
        if count is None:
            return None
        if self.args.average_tokens_across_devices and self._dist.enabled:
            count = self._dist.sum(count)
        return count.to(self.device, non_blocking=True)

    def floating_point_ops(self, inputs: Mapping[str, Any]) -> float:
        """The flops of one forward and backward pass over ``inputs``, summed into
        ``state.total_flos``: the model's ``floating_point_ops`` where it has one, else
        ``6 * tokens * parameters outside the embeddings``, else 0. Override it for other
        models; the loop then calls the override per micro-batch."""
        count = flops_counter(self.model)
        return 0.0 if count is None else count(inputs)

    def _flops_per_batch(self) -> Callable[[Mapping[str, Any]], float] | None:
        """What the loop calls per micro-batch to count flops, decided once per run: an
        overriding ``floating_point_ops``, else the model's rule with its parameter count taken
        now (``None``: nothing to count)."""
        if type(self).floating_point_ops is not LossMixin.floating_point_ops:
            return self.floating_point_ops
        return flops_counter(self.model)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """A fresh model from ``model_init``: called with ``trial`` when it takes one argument.

        Raises ``ConfigurationError`` when there is no ``model_init``, when it takes more than
        one argument or when it returns ``None``.
        """
        model_init = self.model_init
        if model_init is None:
            raise ConfigurationError("call_model_init() needs Trainer(model_init=...)")
        parameters = inspect.signature(model_init).parameters
        if len(parameters) == 0:
            model = model_init()
        elif len(parameters) == 1:
            model = model_init(trial)
        else:
            raise ConfigurationError(
                f"model_init must take no argument or one (the trial); it takes {len(parameters)}"
            )
        if model is None:
            raise ConfigurationError("model_init returned None; it must return the model")
        return model
