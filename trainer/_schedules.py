"""Learning-rate schedules: each Hugging Face ``lr_scheduler_type``, with ``lr_scheduler_kwargs``.

Step-driven schedules are a multiplier of the base rate run by ``LambdaLR``. ``scheduler.step()``
runs after ``optimizer.step()``, so update ``k`` (0-based) trains at ``lr * multiplier(k)``; warm-up
climbs linearly from zero over ``num_warmup_steps`` (``cosine_warmup_with_min_lr`` and
``warmup_stable_decay`` shape theirs differently). A multiplier runs once per parameter group on
every step, so each is a closure over constants worked out when the schedule is built.

Two schedules follow the evaluation metric instead of the step count: ``reduce_lr_on_plateau``
(torch's ``ReduceLROnPlateau``) and ``greedy`` (transformers' ``GreedyLR``). The loop never steps
them per update; it steps them with ``metric_for_best_model`` after each evaluation during training
(not the one ``eval_on_start`` runs), as Hugging Face does (see ``steps_on_metric``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._optim_arguments import parse_scheduler_kwargs
from trainbus.trainer._run_info import best_metric_key

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = ["create_scheduler", "step_on_metric", "steps_on_metric"]

Multiplier = Callable[[int], float]


def _linear(warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]) -> Multiplier:
    ramp, span = max(1, warmup), max(1, total - warmup)

    def linear(step: int) -> float:  # the default schedule: kept to two comparisons
        if step < warmup:
            return step / ramp
        return max(0.0, (total - step) / span)

    return linear


def _cosine(warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]) -> Multiplier:
    ramp, span = max(1, warmup), max(1, total - warmup)
    turn = math.pi * float(kw.get("num_cycles", 0.5)) * 2.0

    def cosine(step: int) -> float:
        if step < warmup:
            return step / ramp
        return max(0.0, 0.5 * (1.0 + math.cos(turn * ((step - warmup) / span))))

    return cosine


def _cosine_with_restarts(
    warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]
) -> Multiplier:
    ramp, span = max(1, warmup), max(1, total - warmup)
    cycles = float(kw.get("num_cycles", 1))

    def cosine_with_restarts(step: int) -> float:
        if step < warmup:
            return step / ramp
        progress = (step - warmup) / span
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))

    return cosine_with_restarts


def _polynomial(warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]) -> Multiplier:
    lr_end, power = float(kw.get("lr_end", 1e-7)), float(kw.get("power", 1.0))
    if not base_lr > lr_end:
        raise ConfigurationError(
            f"lr_scheduler_kwargs['lr_end'] ({lr_end}) must be below the initial learning rate "
            f"({base_lr}) for lr_scheduler_type='polynomial'."
        )
    ramp, decay_steps, drop = max(1, warmup), total - warmup, base_lr - lr_end

    def polynomial(step: int) -> float:
        if step < warmup:
            return step / ramp
        if step > total or decay_steps <= 0:
            return lr_end / base_lr
        remaining = 1 - (step - warmup) / decay_steps
        decayed: float = drop * remaining**power + lr_end
        return decayed / base_lr

    return polynomial


def _constant(warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]) -> Multiplier:
    return lambda step: 1.0


def _constant_with_warmup(
    warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]
) -> Multiplier:
    ramp = max(1, warmup)
    return lambda step: step / ramp if step < warmup else 1.0


def _inverse_sqrt(warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]) -> Multiplier:
    timescale = kw.get("timescale")
    if timescale is None:
        timescale = warmup or 10_000
    ramp, shift = max(1, warmup), timescale - warmup

    def inverse_sqrt(step: int) -> float:
        if step < warmup:
            return step / ramp
        return 1.0 / math.sqrt((step + shift) / timescale)

    return inverse_sqrt


def _min_lr_rate(base_lr: float, kw: Mapping[str, Any]) -> float:
    min_lr = kw.get("min_lr")
    return float(min_lr / base_lr if min_lr is not None else kw["min_lr_rate"])


def _cosine_with_min_lr(
    warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]
) -> Multiplier:
    ramp, span = max(1, warmup), max(1, total - warmup)
    turn = math.pi * float(kw.get("num_cycles", 0.5)) * 2.0
    floor = _min_lr_rate(base_lr, kw)

    def cosine_with_min_lr(step: int) -> float:
        if step < warmup:
            return step / ramp
        wave = 0.5 * (1.0 + math.cos(turn * ((step - warmup) / span)))
        return max(0.0, wave * (1 - floor) + floor)

    return cosine_with_min_lr


def _cosine_warmup_with_min_lr(
    warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]
) -> Multiplier:
    """Like ``cosine_with_min_lr``, but warm-up starts above zero (at ``warmup_lr_rate``, else
    one warm-up step's worth) and the decay counts the step being taken."""
    start = None if kw.get("warmup_lr_rate") is None else float(kw["warmup_lr_rate"])
    turn = math.pi * float(kw.get("num_cycles", 0.5)) * 2.0
    floor = _min_lr_rate(base_lr, kw)
    ramp, span, climb = max(1.0, warmup), max(1.0, total - warmup), max(1, warmup - 1)

    def cosine_warmup_with_min_lr(step: int) -> float:
        if step < warmup:
            if start is None:
                return (step + 1.0) / ramp
            return start + (1.0 - start) * step / climb
        wave = 0.5 * (1.0 + math.cos(turn * ((step - warmup + 1.0) / span)))
        return max(0.0, wave * (1 - floor) + floor)

    return cosine_warmup_with_min_lr


_WARMUP_SHAPES: Final[Mapping[str, Callable[[float], float]]] = {
    "linear": lambda p: p,
    "cosine": lambda p: 0.5 * (1.0 - math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(1.0 - p),
}


def _warmup_stable_decay(
    warmup: int, total: int, base_lr: float, kw: Mapping[str, Any]
) -> Multiplier:
    """Warm-up, a plateau at the full rate, a decay to ``min_lr_ratio``, then that ratio."""
    decay = kw["num_decay_steps"]
    stable = kw.get("num_stable_steps")
    if stable is None:
        stable = total - warmup - decay
    floor = float(kw.get("min_lr_ratio", 0.0))
    rise = _WARMUP_SHAPES[kw.get("warmup_type", "linear")]
    turn = math.pi * float(kw.get("num_cycles", 0.5)) * 2.0
    fall: Callable[[float], float] = {
        "linear": lambda p: 1.0 - p,
        "cosine": lambda p: 0.5 * (1.0 + math.cos(turn * p)),
        "1-sqrt": lambda p: 1.0 - math.sqrt(p),
    }[kw.get("decay_type", "cosine")]
    ramp, fall_steps = max(1, warmup), max(1, decay)

    def warmup_stable_decay(step: int) -> float:
        if step < warmup:
            return max(0.0, rise(step / ramp) * (1.0 - floor) + floor)
        if step < warmup + stable:
            return 1.0
        if step < warmup + stable + decay:
            return max(0.0, fall((step - warmup - stable) / fall_steps) * (1.0 - floor) + floor)
        return floor

    return warmup_stable_decay


_MULTIPLIERS: Final[Mapping[str, Callable[[int, int, float, Mapping[str, Any]], Multiplier]]] = {
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "inverse_sqrt": _inverse_sqrt,
    "cosine_with_min_lr": _cosine_with_min_lr,
    "cosine_warmup_with_min_lr": _cosine_warmup_with_min_lr,
    "warmup_stable_decay": _warmup_stable_decay,
}


def create_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    scheduler_kwargs: Mapping[str, Any] | str | None = None,
) -> LRScheduler:
    """The schedule ``name`` over ``optimizer``, as ``transformers.get_scheduler`` builds it.

    Args:
        name: an ``lr_scheduler_type`` (see ``SCHEDULER_TYPES``).
        optimizer: the optimizer whose groups' rates the schedule sets; schedules that speak of
            an absolute rate (``lr_end``, ``min_lr``) read its initial one from ``defaults["lr"]``.
        num_warmup_steps: warm-up length in optimizer steps.
        num_training_steps: the run's length in optimizer steps.
        scheduler_kwargs: ``lr_scheduler_kwargs`` (checked again here: arguments are mutable).

    Raises:
        ConfigurationError: an unknown name, or kwargs the schedule does not take.
    """
    kwargs = parse_scheduler_kwargs(name, scheduler_kwargs)
    if name == "reduce_lr_on_plateau":
        return ReduceLROnPlateau(optimizer, **kwargs)
    if name == "greedy":
        # GreedyLR has a scheduler's interface (step, get_last_lr, state_dict) but no base class.
        greedy: LRScheduler = _greedy_class()(optimizer, **kwargs)
        return greedy
    base_lr = float(optimizer.defaults["lr"])
    multiplier = _MULTIPLIERS[name](num_warmup_steps, num_training_steps, base_lr, kwargs)
    return LambdaLR(optimizer, multiplier)


def _greedy_class() -> Any:
    """transformers' ``GreedyLR``; torch has none, and transformers is an optional dependency."""
    try:
        from transformers.optimization import GreedyLR
    except ImportError:
        raise ConfigurationError(
            "lr_scheduler_type='greedy' uses transformers' GreedyLR, and the transformers package "
            "is not installed (pip install transformers)."
        ) from None
    return GreedyLR


def steps_on_metric(scheduler: object) -> bool:
    """Whether ``scheduler`` steps on an evaluation metric (after evaluations, not per update).

    True for ``ReduceLROnPlateau`` and transformers' ``GreedyLR``, whoever built them (a user's
    ``optimizers=`` too). transformers is looked at only if something already imported it.
    """
    if isinstance(scheduler, ReduceLROnPlateau):
        return True
    optimization = sys.modules.get("transformers.optimization")
    greedy = getattr(optimization, "GreedyLR", None)
    return isinstance(greedy, type) and isinstance(scheduler, greedy)


def step_on_metric(scheduler: Any, args: TrainingArguments, metrics: Mapping[str, Any]) -> None:
    """Step a metric-driven schedule with ``metric_for_best_model`` from ``metrics``.

    Raises:
        ConfigurationError: the evaluation did not produce that metric (the message lists what
            it produced).
    """
    key = best_metric_key(args)
    if key is None or key not in metrics:
        raise ConfigurationError(
            f"{type(scheduler).__name__} steps on metric_for_best_model="
            f"{args.metric_for_best_model!r}, which the evaluation did not produce; it produced "
            f"{sorted(metrics)}."
        )
    scheduler.step(metrics[key])
