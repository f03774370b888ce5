"""The ``optim`` and ``lr_scheduler_type`` names we implement, and the checks of their arguments.

Torch-free, so ``TrainingArguments`` checks ``optim_args`` and ``lr_scheduler_kwargs`` when it is
built, before anything trains. Values are read as Hugging Face reads them: ``optim_args`` is
``"key=value,key=value"`` (blanks ignored) with per-optimizer keys, ``lr_scheduler_kwargs`` a dict
or a JSON object string (whose string values ``"true"``, ``"3"``, ``"0.5"`` become a boolean, a
whole number, a number). One deliberate difference: Hugging Face ignores an ``optim_args`` key the
optimizer does not read and fails at the first step on a bad ``lr_scheduler_kwargs`` key; here
either is a `ConfigurationError` naming the key and the accepted ones, since a misspelt
``momentun=0.9`` would otherwise train without momentum and say nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from trainbus.bus._env import env_flag
from trainbus.bus._errors import ConfigurationError

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = [
    "IMPLEMENTED_OPTIMIZERS",
    "METRIC_SCHEDULERS",
    "SCHEDULER_TYPES",
    "check_optimization_arguments",
    "parse_optim_args",
    "parse_scheduler_kwargs",
]

IMPLEMENTED_OPTIMIZERS: Final = (
    "adamw_torch_fused",
    "adamw_torch",
    "sgd",
    "adagrad",
    "rmsprop",
    "adafactor",
)
"""The ``optim`` values trainbus builds: torch's own optimizers (fused AdamW, Hugging Face v5's
default, first), and transformers' Adafactor when transformers is installed. Every other Hugging
Face name needs a package trainbus does not use (bitsandbytes, torchao, apex, GaLore, ...)."""

SCHEDULER_TYPES: Final = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
"""Every Hugging Face ``lr_scheduler_type`` (transformers 5.x's ``SchedulerType`` values)."""

METRIC_SCHEDULERS: Final = ("reduce_lr_on_plateau", "greedy")
"""Schedules that follow the evaluation metric (``metric_for_best_model``), not the step count."""

_NUMBER: Final = "number"
_BOOLEAN: Final = "boolean"

_OPTIM_ARGS: Final[Mapping[str, Mapping[str, str]]] = {
    "adamw_torch_fused": {},
    "adamw_torch": {},
    "adafactor": {},
    "sgd": {
        "momentum": _NUMBER,
        "dampening": _NUMBER,
        "weight_decay": _NUMBER,
        "nesterov": _BOOLEAN,
    },
    "adagrad": {"lr_decay": _NUMBER, "weight_decay": _NUMBER, "eps": _NUMBER},
    "rmsprop": {
        "momentum": _NUMBER,
        "alpha": _NUMBER,
        "eps": _NUMBER,
        "weight_decay": _NUMBER,
        "centered": _BOOLEAN,
    },
}
"""The ``optim_args`` keys each optimizer reads (the others read none), and their kind."""

_SHAPES: Final = ("linear", "cosine", "1-sqrt")
"""``warmup_type`` and ``decay_type`` of ``warmup_stable_decay``."""

_PLATEAU_KEYS: Final = (
    "mode",
    "factor",
    "patience",
    "threshold",
    "threshold_mode",
    "cooldown",
    "min_lr",
    "eps",
)
"""``torch.optim.lr_scheduler.ReduceLROnPlateau``'s settings (a test keeps this list exact)."""

_GREEDY_KEYS: Final = (
    *_PLATEAU_KEYS,
    "warmup",
    "max_lr",
    "verbose",
    "smooth",
    "window_size",
    "reset_start",
)
"""transformers' ``GreedyLR`` settings (a test keeps this list exact)."""

_SCHEDULE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "linear": (),
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"),
    "constant": (),
    "constant_with_warmup": (),
    "inverse_sqrt": ("timescale",),
    "reduce_lr_on_plateau": _PLATEAU_KEYS,
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": (
        "num_decay_steps",
        "num_stable_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
    ),
    "greedy": _GREEDY_KEYS,
}
"""The ``lr_scheduler_kwargs`` keys each schedule takes. The metric-driven ones hand theirs to
their class, which checks the values; the step-driven ones' values are checked here."""

_NUMBER_KEYS: Final = frozenset(
    {"num_cycles", "lr_end", "power", "min_lr", "min_lr_rate", "warmup_lr_rate", "min_lr_ratio"}
)
_STEP_KEYS: Final = frozenset({"timescale", "num_decay_steps", "num_stable_steps"})


def parse_optim_args(optim: str, text: str | None) -> dict[str, float | bool]:
    """``optim_args`` as the keyword arguments ``optim``'s optimizer gets (empty for ``None``).

    Args:
        optim: the ``optim`` name; it decides which keys are accepted.
        text: ``"key=value,key=value"``; blanks anywhere are ignored, as in Hugging Face.

    Raises:
        ConfigurationError: an entry is not ``key=value``, a key is not one ``optim`` reads, or a
            value is not a finite number (or, for ``nesterov``/``centered``, a boolean).
    """
    if text is not None and not isinstance(text, str):
        raise ConfigurationError(f"optim_args must be a string or None, got {text!r}.")
    if optim not in _OPTIM_ARGS:
        choices = ", ".join(repr(name) for name in IMPLEMENTED_OPTIMIZERS)
        raise ConfigurationError(f"optim must be one of {choices}, got {optim!r}.")
    if not text:
        return {}
    accepted = _OPTIM_ARGS[optim]
    parsed: dict[str, float | bool] = {}
    for entry in text.replace(" ", "").split(","):
        key, sep, value = entry.partition("=")
        if not sep or not key or "=" in value:
            raise ConfigurationError(
                f"optim_args must be 'key=value' pairs separated by commas, got {text!r}."
            )
        if key not in accepted:
            known = ", ".join(accepted) or "no keys"
            raise ConfigurationError(
                f"optim_args key {key!r} is not read by optim={optim!r} (it reads {known})."
            )
        if accepted[key] == _BOOLEAN:
            name = f"optim_args {key}"
            parsed[key] = env_flag({name: value}, name)
        else:
            parsed[key] = _finite(f"optim_args {key}", value)
    return parsed


def _finite(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}.")
    return number


def parse_scheduler_kwargs(name: str, raw: object) -> dict[str, Any]:
    """``lr_scheduler_kwargs`` for schedule ``name`` as a checked dict (empty for ``None``).

    Args:
        name: the ``lr_scheduler_type``.
        raw: a dict, a JSON object string (as a command line passes it), or ``None``.

    Raises:
        ConfigurationError: ``raw`` is no dict or JSON object, a key is not one ``name`` takes, a
            required key is missing, or a value is of the wrong kind.
    """
    if name not in _SCHEDULE_KEYS:
        choices = ", ".join(repr(n) for n in SCHEDULER_TYPES)
        raise ConfigurationError(f"lr_scheduler_type must be one of {choices}, got {name!r}.")
    kwargs = _as_dict(raw)
    accepted = _SCHEDULE_KEYS[name]
    for key in kwargs:
        if key not in accepted:
            known = ", ".join(accepted) or "no keys"
            raise ConfigurationError(
                f"lr_scheduler_kwargs key {key!r} is not taken by lr_scheduler_type={name!r} "
                f"(it takes {known})."
            )
    if name not in METRIC_SCHEDULERS:
        for key, value in kwargs.items():
            _check_schedule_value(key, value)
    _check_required(name, kwargs)
    return kwargs


def _as_dict(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str) and raw.lstrip().startswith("{"):
        try:
            return _typed_strings(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"lr_scheduler_kwargs is not valid JSON ({exc.msg}), got {raw!r}."
            ) from None
    if isinstance(raw, Mapping) and all(isinstance(key, str) for key in raw):
        return dict(raw)
    raise ConfigurationError(
        f"lr_scheduler_kwargs must be a dict or a JSON object string, got {raw!r}."
    )


def _typed_strings(data: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face's reading of a JSON string's values: "3" a number, "true" a boolean.

    Booleans are read by the one boolean reader, which also takes "yes"/"on" (Hugging Face keeps
    those as text, which no schedule accepts anyway).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _typed_strings(value)
        elif isinstance(value, str) and value.isdigit():
            value = int(value)
        elif isinstance(value, str) and value.replace(".", "", 1).isdigit():
            value = float(value)
        elif isinstance(value, str) and value.strip():
            with contextlib.suppress(ConfigurationError):  # plain text, such as "mode": "min"
                value = env_flag({key: value}, key)
        out[key] = value
    return out


def _check_schedule_value(key: str, value: object) -> None:
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )
    if key in _NUMBER_KEYS and value is not None and not math.isfinite(number):
        raise ConfigurationError(
            f"lr_scheduler_kwargs[{key!r}] must be a finite number, got {value!r}."
        )
    if key in _STEP_KEYS and value is not None and not (math.isfinite(number) and number >= 0):
        raise ConfigurationError(
            f"lr_scheduler_kwargs[{key!r}] must be a number of steps >= 0, got {value!r}."
        )
    if key in ("warmup_type", "decay_type") and value not in _SHAPES:
        choices = ", ".join(repr(shape) for shape in _SHAPES)
        raise ConfigurationError(
            f"lr_scheduler_kwargs[{key!r}] must be one of {choices}, got {value!r}."
        )


def _check_required(name: str, kwargs: Mapping[str, Any]) -> None:
    if name == "warmup_stable_decay" and kwargs.get("num_decay_steps") is None:
        raise ConfigurationError(
            "lr_scheduler_type='warmup_stable_decay' needs lr_scheduler_kwargs['num_decay_steps'] "
            "(the length of the decay, in optimizer steps)."
        )
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        given = [key for key in ("min_lr", "min_lr_rate") if kwargs.get(key) is not None]
        if len(given) != 1:
            raise ConfigurationError(
                f"lr_scheduler_type={name!r} needs exactly one of lr_scheduler_kwargs['min_lr'] "
                f"and lr_scheduler_kwargs['min_lr_rate'], got {given or 'neither'}."
            )
    if name == "inverse_sqrt" and kwargs.get("timescale") == 0:
        raise ConfigurationError("lr_scheduler_kwargs['timescale'] must be > 0, got 0.")


def check_optimization_arguments(args: TrainingArguments) -> None:
    """Check ``optim_args`` and ``lr_scheduler_kwargs``; fill in what metric schedules need.

    A JSON ``lr_scheduler_kwargs`` string becomes its dict. ``reduce_lr_on_plateau`` and
    ``greedy`` step on an evaluation metric, so they need an ``eval_strategy``, and
    ``metric_for_best_model`` defaults to ``"loss"`` for them, as in Hugging Face.
    """
    parse_optim_args(args.optim, args.optim_args)
    if args.lr_scheduler_kwargs is not None:
        args.lr_scheduler_kwargs = parse_scheduler_kwargs(
            args.lr_scheduler_type, args.lr_scheduler_kwargs
        )
    else:
        parse_scheduler_kwargs(args.lr_scheduler_type, None)
    if args.lr_scheduler_type in METRIC_SCHEDULERS:
        if args.eval_strategy == "no":
            raise ConfigurationError(
                f"lr_scheduler_type={args.lr_scheduler_type!r} steps on an evaluation metric, so "
                "eval_strategy must be 'steps' or 'epoch', got 'no'."
            )
        if args.metric_for_best_model is None:
            args.metric_for_best_model = "loss"
