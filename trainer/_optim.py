"""The default optimizer (AdamW) and the learning-rate schedules, with Hugging Face's formulas.

Each schedule is a ``LambdaLR`` multiplier of the base rate. ``scheduler.step()`` runs after
``optimizer.step()``, so the rate of update ``k`` (0-based) is ``lr * multiplier(k)``: warm-up
climbs from zero, linear decays to zero at ``num_training_steps``, cosine follows half a cosine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import structlog
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from trainbus.bus._errors import ConfigurationError

__all__ = ["SCHEDULER_NAMES", "create_optimizer", "create_scheduler", "resolve_warmup_steps"]

_log = structlog.get_logger(__name__)

SCHEDULER_NAMES: Final = ("linear", "cosine", "constant", "constant_with_warmup")


def create_optimizer(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: biases and norm scales are not decayed.

    Without weight decay the split changes nothing but costs a second pass of the optimizer's
    Python code per step, so there is then a single group. ``fused`` (``optim="adamw_torch_fused"``,
    Hugging Face v5's default) updates every parameter in one kernel: on a small CPU model the
    step takes a fraction of the per-tensor loop's time. Parameters torch cannot fuse for (a
    device or dtype without the kernel) get the unfused AdamW instead, with a warning.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": trainable, "weight_decay": 0.0}]
    if weight_decay != 0:
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
    groups = [group for group in groups if group["params"]]
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=True)
        except RuntimeError as exc:  # no fused kernel for these parameters' device or dtype
            _log.warning("fused AdamW unavailable, using the unfused one", reason=str(exc))
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def resolve_warmup_steps(warmup_steps: float, max_steps: int) -> int:
    """``warmup_steps`` below 1 is a fraction of the run (rounded up), otherwise a step count."""
    if warmup_steps < 0:
        raise ConfigurationError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if 0 < warmup_steps < 1:
        return math.ceil(warmup_steps * max_steps)
    return int(warmup_steps)


def _multiplier(name: str, warmup: int, total: int) -> Callable[[int], float]:
    def warm(step: int) -> float | None:
        return step / max(1, warmup) if step < warmup else None

    def linear(step: int) -> float:  # warm() inlined: the default schedule, called every step
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def cosine(step: int) -> float:
        ramp = warm(step)
        if ramp is not None:
            return ramp
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def constant_with_warmup(step: int) -> float:
        ramp = warm(step)
        return ramp if ramp is not None else 1.0

    table: dict[str, Callable[[int], float]] = {
        "linear": linear,
        "cosine": cosine,
        "constant": lambda step: 1.0,
        "constant_with_warmup": constant_with_warmup,
    }
    return table[name]


def create_scheduler(
    name: str, optimizer: torch.optim.Optimizer, *, num_warmup_steps: int, num_training_steps: int
) -> LRScheduler:
    """One of ``SCHEDULER_NAMES`` as a ``LambdaLR``; an unknown name is a configuration error."""
    if name not in SCHEDULER_NAMES:
        raise ConfigurationError(
            f"lr_scheduler_type must be one of {', '.join(SCHEDULER_NAMES)}; got {name!r}"
        )
    return LambdaLR(optimizer, _multiplier(name, num_warmup_steps, num_training_steps))
