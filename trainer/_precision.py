"""Mixed precision for one trainer: the autocast context, the backward, clipping and the step.

Built once from the arguments and the device (``Precision.from_arguments``), so the training step
never asks which mode it is in. In full precision ``autocast()`` hands back one shared
``nullcontext``, ``backward`` is ``loss.backward()``, and ``steppers()`` returns torch's own
``clip_grad_norm_``, ``optimizer.step`` and ``scheduler.step``: the loop calls exactly what it
called before mixed precision existed.

- ``bf16``: the forward pass (the loss included) runs under ``torch.autocast`` to bfloat16. No
  scaler: bfloat16 has float32's range, so gradients do not underflow.
- ``fp16``: autocast to float16, and a ``torch.amp.GradScaler``. The loss is scaled before
  backward; gradients are unscaled before clipping, so the clip and the logged ``grad_norm`` see
  true values; a step whose gradients hold an inf or a NaN is skipped by the scaler, which then
  lowers its scale. As in transformers (through accelerate), a skipped step still counts:
  ``global_step`` advances and every step event fires, but the learning-rate schedule stays where
  it was (``step_skipped`` says so).

One deliberate difference: on CPU, transformers (accelerate) ignores ``fp16`` and trains in
float32 without a word; we honour it, since torch autocasts to float16 and scales on CPU too.

Evaluation uses the same autocast around the forward pass (transformers patches it into the
model's ``forward``, so evaluation runs under it as well). ``fp16_full_eval``/``bf16_full_eval``
cast the model itself to half precision when ``evaluate()``/``predict()`` run outside ``train()``;
the cast is in place, as in transformers, so the model keeps that dtype afterwards.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Final, NamedTuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments

__all__ = ["Precision", "Steppers"]

Clip = Callable[[Iterable[torch.Tensor], float], torch.Tensor]
"""``clip_grad_norm_(parameters, max_norm)``: clips in place, returns the total norm."""

_NO_CONTEXT: Final = contextlib.nullcontext()


def _no_autocast() -> AbstractContextManager[Any]:
    return _NO_CONTEXT


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()  # type: ignore[no-untyped-call]  # torch's stub is untyped


class Steppers(NamedTuple):
    """What the loop calls at the end of a window of micro-batches, in this order."""

    clip: Clip
    """Unscale (``fp16``), then clip; returns the gradient norm."""
    step: Callable[[], object]
    """The optimizer step (through the scaler under ``fp16``)."""
    schedule: Callable[[], object]
    """The scheduler step, skipped after a skipped optimizer step."""


class Precision:
    """The precision a trainer trains and evaluates in (see the module docstring).

    Parameters:
        device_type: ``torch.device.type`` the model runs on (``"cpu"``, ``"cuda"``, ...).
        dtype: the autocast dtype, or ``None`` for full precision.
        scaled: whether gradients go through a ``GradScaler`` (``fp16`` only).
        full_eval_dtype: the dtype ``evaluate()`` casts the model to outside ``train()``, if any.
    """

    def __init__(
        self,
        device_type: str,
        dtype: torch.dtype | None = None,
        *,
        scaled: bool = False,
        full_eval_dtype: torch.dtype | None = None,
    ) -> None:
        self.device_type = device_type
        self.dtype = dtype
        self.full_eval_dtype = full_eval_dtype
        self.scaler = torch.amp.GradScaler(device_type) if scaled else None
        """The loss scaler under ``fp16``; ``None`` otherwise."""
        self.step_skipped = False
        """Whether the last optimizer step was skipped for inf/NaN gradients (``fp16`` only)."""
        self.autocast: Callable[[], AbstractContextManager[Any]] = (
            _no_autocast
            if dtype is None
            else functools.partial(torch.autocast, device_type, dtype=dtype)
        )
        """A fresh autocast context for one forward pass (one shared no-op in full precision)."""
        self.backward: Callable[[torch.Tensor], None] = (
            _plain_backward
            if self.scaler is None
            else functools.partial(_scaled_backward, self.scaler)
        )
        """Backward of a micro-batch's loss, scaled under ``fp16``."""

    @classmethod
    def from_arguments(cls, args: TrainingArguments, device: torch.device) -> Precision:
        """The precision ``args`` ask for on ``device``, or a `ConfigurationError` if it has none.

        Both flags together are refused by ``TrainingArguments`` already.
        """
        dtype: torch.dtype | None = None
        if args.bf16:
            _check_bf16(device, "bf16")
            dtype = torch.bfloat16
        elif args.fp16:
            _check_fp16(device, "fp16")
            dtype = torch.float16
        full_eval: torch.dtype | None = None
        if args.bf16_full_eval:
            _check_bf16(device, "bf16_full_eval")
            full_eval = torch.bfloat16
        elif args.fp16_full_eval:
            full_eval = torch.float16
        return cls(device.type, dtype, scaled=dtype is torch.float16, full_eval_dtype=full_eval)

    def steppers(self, optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> Steppers:
        """Clip, step and schedule for ``optimizer``; torch's own functions in full precision."""
        if self.scaler is None:
            return Steppers(nn.utils.clip_grad_norm_, optimizer.step, scheduler.step)
        scaler = self.scaler

        def unscale_and_clip(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
            scaler.unscale_(optimizer)
            return nn.utils.clip_grad_norm_(parameters, max_norm)

        def step() -> None:
            # The scale drops only when the scaler found an inf or a NaN, which is exactly when it
            # did not call optimizer.step(): comparing scales tells us so through public API.
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            self.step_skipped = scaler.get_scale() < scale

        def schedule() -> None:
            if not self.step_skipped:
                scheduler.step()

        return Steppers(unscale_and_clip, step, schedule)

    def prepare_evaluation(self, model: nn.Module, *, in_train: bool) -> None:
        """Cast ``model`` to the full-eval dtype when evaluating outside ``train()`` (in place).

        During ``train()`` transformers leaves the model as it trains, and so do we.
        """
        if self.full_eval_dtype is not None and not in_train:
            model.to(dtype=self.full_eval_dtype)


def _scaled_backward(scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch's stub is untyped


def _check_bf16(device: torch.device, field: str) -> None:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigurationError(
            f"{field}=True needs a device with bfloat16 support; {device} has none (set "
            "use_cpu=True to train on the CPU, or use fp16)."
        )


def _check_fp16(device: torch.device, field: str) -> None:
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigurationError(
            f"{field}=True needs a device torch can autocast to float16; {device} cannot."
        )
