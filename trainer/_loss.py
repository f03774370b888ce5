"""The training loss between two log entries, summed without touching the device per step.

Hugging Face adds each micro-batch's (already ``1/GA``-scaled) loss to a device-side sum, and with
``logging_nan_inf_filter`` a non-finite loss adds the running mean instead::

    total += total / (1 + global_step - last_logged)   # when loss is NaN or inf
    total += loss                                      # otherwise

Done eagerly that is four small device operations per micro-batch (``isfinite``, a division,
``where``, an addition), each a kernel launch on a GPU and several microseconds of dispatch on
a CPU, on every micro-batch, for a number read only when a log entry is written. ``LossSum`` keeps
the detached loss tensors instead and applies the same rule when the sum is read: one stack and
one read-back per log entry. So that the list stays short when logging is rare, every
``FOLD_EVERY`` losses are folded into one device scalar with the rule in closed form (a few
vectorised operations, still no read-back; see ``fold_on_device``).
"""

from __future__ import annotations

import math
from typing import Final

import torch

__all__ = ["FOLD_EVERY", "LossSum", "fold_on_device"]

FOLD_EVERY: Final = 1024


def fold_on_device(
    start: torch.Tensor, losses: torch.Tensor, divisors: torch.Tensor, nan_inf_filter: bool
) -> torch.Tensor:
    """``start`` after adding ``losses`` one by one under the filter rule, without a read-back.

    The rule is the linear recurrence ``s_i = a_i * s_(i-1) + b_i`` with ``a_i = 1 + 1/d_i`` and
    ``b_i = 0`` for a non-finite loss, ``a_i = 1`` and ``b_i = loss_i`` otherwise, whose solution
    is ``s_n = s_0 * prod(a) + sum_i b_i * prod(a_(i+1..n))``: suffix products by a reversed
    cumulative product.
    """
    losses = losses.to(start.dtype)
    if not nan_inf_filter:
        return start + losses.sum()
    finite = torch.isfinite(losses)
    growth = torch.where(finite, torch.ones_like(losses), 1 + 1 / divisors.to(start.dtype))
    added = torch.where(finite, losses, torch.zeros_like(losses))
    suffix = torch.cumprod(growth.flip(0), 0).flip(0)  # suffix[i] = prod(a_i..a_n)
    after = torch.cat([suffix[1:], suffix.new_ones(1)])  # prod(a_(i+1)..a_n)
    return start * suffix[0] + (added * after).sum()


class LossSum:
    """The (filtered) sum of the losses added since the last ``take()``."""

    def __init__(self, device: torch.device, *, nan_inf_filter: bool) -> None:
        self.nan_inf_filter = nan_inf_filter
        self._device = device
        self._folded: torch.Tensor | None = None
        self._losses: list[torch.Tensor] = []
        self._divisors: list[int] = []

    def add(self, loss: torch.Tensor, steps_since_log: int) -> None:
        """Add a detached scalar loss; ``steps_since_log`` is HF's ``1 + step - last_logged``."""
        self._losses.append(loss)
        self._divisors.append(steps_since_log)
        if len(self._losses) >= FOLD_EVERY:
            self._fold()

    def as_tensor(self) -> torch.Tensor:
        """The sum as a device scalar (for an all-reduce across ranks); no read-back."""
        self._fold()
        assert self._folded is not None  # set by _fold
        return self._folded

    def take(self) -> float:
        """Read the sum (one device read-back at most) and start again from zero."""
        losses, divisors = self._losses, self._divisors
        if self._folded is None and len(losses) == 1:  # logging every update: the usual case
            value = losses[0].item()
            losses.clear()
            divisors.clear()
            # a lone non-finite loss adds the running mean of nothing: zero
            return 0.0 + value if not self.nan_inf_filter or math.isfinite(value) else 0.0
        start = 0.0 if self._folded is None else None
        if start is None:
            assert self._folded is not None
            values = torch.stack([self._folded, *(x.to(self._folded.dtype) for x in losses)])
            start, *rest = values.tolist()
        elif losses:
            rest = torch.stack([x.float() for x in losses]).tolist()
        else:
            rest = []
        total = float(start)
        for value, divisor in zip(rest, divisors, strict=True):
            if self.nan_inf_filter and not math.isfinite(value):
                total += total / divisor
            else:
                total += value
        self._folded = None
        losses.clear()
        divisors.clear()
        return total

    def clear(self) -> None:
        """Forget everything added so far."""
        self._folded = None
        self._losses, self._divisors = [], []

    def _fold(self) -> None:
        start = self._folded
        if start is None:
            start = torch.zeros((), dtype=torch.float32, device=self._device)
        if self._losses:
            losses = torch.stack([x.float() for x in self._losses])
            divisors = torch.tensor(self._divisors, dtype=torch.float32)
            if self._device.type == "cuda":  # a pageable copy would wait for the device
                divisors = divisors.pin_memory()
            divisors = divisors.to(self._device, non_blocking=True)
            start = fold_on_device(start, losses, divisors, self.nan_inf_filter)
        self._folded = start
        self._losses, self._divisors = [], []
