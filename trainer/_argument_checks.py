"""The rules of `TrainingArguments`: what each field accepts and what follows from it.

`settle` runs once, from ``TrainingArguments.__post_init__``, in three passes:

1. refuse a field trainbus does not support yet when it is set to anything but its default (the
   registry in ``trainbus.trainer._support`` says which);
2. normalise and derive as transformers does (its string enums become plain strings, JSON text
   becomes a dict, ``gradient_checkpointing`` mirrors ``activation_checkpointing``,
   ``eval_steps`` copies ``logging_steps``, ``metric_for_best_model`` defaults to ``"loss"`` ...);
3. check every value, so a bad one raises a `ConfigurationError` (a ``ValueError``) naming the
   field before anything runs. transformers refuses the same inputs (sometimes later, or as a
   different exception); ours also refuses NaN, infinities and booleans given as text.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Final

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._optim_arguments import (
    METRIC_SCHEDULERS,
    SCHEDULER_TYPES,
    check_optimization_arguments,
)
from trainbus.trainer._support import FIELDS, refusal

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = [
    "HUB_STRATEGIES",
    "LOGGING_STRATEGIES",
    "LOG_LEVELS",
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "SAMPLING_STRATEGIES",
    "SAVE_STRATEGIES",
    "SCHEDULER_TYPES",
    "START_METHODS",
    "TOKEN_COUNTING",
    "settle",
]

LOGGING_STRATEGIES: Final = ("no", "steps", "epoch")
"""Valid values of ``logging_strategy`` and ``eval_strategy``."""
SAVE_STRATEGIES: Final = ("no", "steps", "epoch", "best")
OPTIMIZER_NAMES: Final = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_radam",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "stable_adamw",
)
"""transformers' ``OptimizerNames`` values: the names ``optim`` may take at all."""
OPTIMIZERS: Final = FIELDS["optim"].values
"""The ``optim`` names trainbus builds (the others are refused, naming the value)."""
HUB_STRATEGIES: Final = ("end", "every_save", "checkpoint", "all_checkpoints")
TOKEN_COUNTING: Final = ("all", "non_padding", "no")
"""Valid values of ``include_num_input_tokens_seen`` (``True``/``False`` mean "all"/"no")."""
LOG_LEVELS: Final = {
    "detail": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "passive": -1,
}
"""``log_level`` names and their ``logging`` levels; ``passive`` (-1) keeps the current one."""
SAMPLING_STRATEGIES: Final = ("random", "sequential", "group_by_length", "batch_rebalance")
START_METHODS: Final = ("fork", "spawn", "forkserver")
_METRICS_INPUTS: Final = ("inputs", "loss")
_DICT_FIELDS: Final = (
    "activation_checkpointing_kwargs",
    "gradient_checkpointing_kwargs",
)
"""Implemented fields that take a dict, or its JSON text (from a command line);
``lr_scheduler_kwargs`` is read with the schedules' own rules (``_optim_arguments``)."""
_ENUM_FIELDS: Final = (
    "logging_strategy",
    "eval_strategy",
    "save_strategy",
    "lr_scheduler_type",
    "optim",
    "hub_strategy",
    "report_to",
)


def settle(args: TrainingArguments) -> None:
    """Refuse, normalise and check every field once (the module docstring has the order)."""
    _refuse_unsupported(args)
    _normalise(args)
    _check_flags(args)
    _check_choices(args)
    _check_sizes(args)
    _check_optimizer(args)
    _check_warmup(args)
    _check_intervals(args)
    _check_best_model(args)
    _check_precision(args)
    _check_data(args)
    _check_report_to(args.report_to)
    if args.eval_strategy != "no":
        args.do_eval = True


# --- 1. refusals ------------------------------------------------------------------------------


def _refuse_unsupported(args: TrainingArguments) -> None:
    for field in dataclasses.fields(args):
        support = FIELDS.get(field.name)
        if support is None or support.status != "refused":
            continue
        value = getattr(args, field.name)
        default = field.default
        if value == default or (support.falsy_is_default and not value):
            continue
        detail = f"got {value!r}, supported: {default!r}"
        raise ConfigurationError(
            refusal(field.name, f"{detail}; {support.note}" if support.note else detail)
        )


# --- 2. normalising and deriving --------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Turn a `transformers` str-enum (``IntervalStrategy.STEPS``) into its plain string."""
    return value.value if isinstance(value, enum.Enum) else value


def _normalise(args: TrainingArguments) -> None:
    raw_dir: object = args.output_dir
    if raw_dir is None:  # Hugging Face's own default spelling
        raw_dir = "trainer_output"
    if not isinstance(raw_dir, str | os.PathLike) or not os.fspath(raw_dir):
        raise ConfigurationError(f"output_dir must be a non-empty path, got {raw_dir!r}.")
    args.output_dir = os.path.expanduser(os.fspath(raw_dir))
    for name in _ENUM_FIELDS:
        setattr(args, name, _plain(getattr(args, name)))
    if isinstance(args.include_num_input_tokens_seen, bool):
        args.include_num_input_tokens_seen = "all" if args.include_num_input_tokens_seen else "no"
    for name in _DICT_FIELDS:
        setattr(args, name, _dict_or_none(name, getattr(args, name)))
    _mirror_checkpointing(args)
    args.debug = []  # refused unless empty, so empty: transformers' list of debug options
    if args.disable_tqdm is None:
        # Same rule as Hugging Face: a logger quieter than WARNING means "no progress bars".
        args.disable_tqdm = logging.getLogger("trainer").getEffectiveLevel() > logging.WARNING
    if (args.torch_compile_mode is not None or args.torch_compile_backend is not None) and (
        args.torch_compile is False
    ):
        args.torch_compile = True
    if args.torch_compile is True and args.torch_compile_backend is None:
        args.torch_compile_backend = "inductor"
    if args.use_cpu is True:
        args.dataloader_pin_memory = False
    if args.warmup_ratio is not None:
        _fold_warmup_ratio(args)


def _dict_or_none(name: str, value: object) -> dict[str, Any] | None:
    """A dict field's value: a dict, ``None``, or JSON text of a dict (a command line's)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{name} is not valid JSON ({exc}), got {value!r}.") from None
    if value is None or isinstance(value, dict):
        return value
    raise ConfigurationError(f"{name} must be a dict or its JSON text, got {value!r}.")


def _mirror_checkpointing(args: TrainingArguments) -> None:
    """``gradient_checkpointing*`` are transformers' deprecated names: used only when the new
    ones are unset, then mirroring them, so code that reads either sees the same value."""
    pairs = (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    )
    for old, new in pairs:
        if getattr(args, new) is None and getattr(args, old) is not None:
            warnings.warn(
                f"{old} is deprecated (transformers removes it in v6); use {new} instead.",
                FutureWarning,
                stacklevel=6,
            )
            setattr(args, new, getattr(args, old))
        setattr(args, old, getattr(args, new))
    if args.activation_checkpointing is None:
        args.activation_checkpointing = args.gradient_checkpointing = False


def _fold_warmup_ratio(args: TrainingArguments) -> None:
    ratio = args.warmup_ratio
    _check_number("warmup_ratio", ratio, 0)
    if ratio is not None and ratio > 1:
        raise ConfigurationError(f"warmup_ratio must be in [0, 1], got {ratio}.")
    if args.warmup_steps:
        raise ConfigurationError(
            "Set either warmup_steps or warmup_ratio, not both "
            f"(got warmup_steps={args.warmup_steps}, warmup_ratio={ratio})."
        )
    warnings.warn(
        "warmup_ratio is deprecated; pass the ratio as warmup_steps (a float below 1).",
        FutureWarning,
        stacklevel=6,
    )
    args.warmup_steps, args.warmup_ratio = ratio or 0, None


# --- 3. checks --------------------------------------------------------------------------------


def _check_flags(args: TrainingArguments) -> None:
    """Yes/no fields must be real booleans: a TOML string "false" would otherwise read as true."""
    cls = type(args)
    flags = _FLAG_FIELDS.get(cls)
    if flags is None:
        flags = _FLAG_FIELDS[cls] = _flag_fields(cls)
    for name, optional in flags:
        value = getattr(args, name)
        if not isinstance(value, bool) and not (optional and value is None):
            raise ConfigurationError(f"{name} must be true or false, got {value!r}.")


_FLAG_FIELDS: Final[dict[type, tuple[tuple[str, bool], ...]]] = {}


def _flag_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """``(name, optional)`` of each ``bool`` or ``bool | None`` field of ``cls``.

    Read from the classes' own annotations, not from ``dataclasses.fields(cls)``:
    ``HfArgumentParser`` rewrites those fields' ``type`` in place (``str | bool`` becomes
    ``bool``), and a script parses its command line before it builds the arguments.
    """
    declared: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        declared.update(vars(klass).get("__annotations__", {}))
    fields = {field.name for field in dataclasses.fields(cls)}
    kinds = {name: _type_text(kind) for name, kind in declared.items() if name in fields}
    return tuple(
        (name, kind == "bool | None") for name, kind in kinds.items() if kind in _FLAG_TYPES
    )


_FLAG_TYPES: Final = ("bool", "bool | None")


def _type_text(kind: object) -> str:
    """An annotation as written: a string already (postponed annotations), or a type's name."""
    if isinstance(kind, str):
        return kind
    return kind.__name__ if isinstance(kind, type) else str(kind)


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        choices = ", ".join(repr(v) for v in valid)
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}.")


def _check_choices(args: TrainingArguments) -> None:
    _check_choice("logging_strategy", args.logging_strategy, LOGGING_STRATEGIES)
    _check_choice("eval_strategy", args.eval_strategy, LOGGING_STRATEGIES)
    _check_choice("save_strategy", args.save_strategy, SAVE_STRATEGIES)
    _check_choice("lr_scheduler_type", args.lr_scheduler_type, SCHEDULER_TYPES)
    _check_choice("optim", args.optim, OPTIMIZER_NAMES)
    if args.optim not in OPTIMIZERS:
        supported = ", ".join(repr(name) for name in OPTIMIZERS)
        raise ConfigurationError(refusal(f"optim={args.optim!r}", f"supported: {supported}"))
    _check_choice("hub_strategy", args.hub_strategy, HUB_STRATEGIES)
    _check_choice(
        "include_num_input_tokens_seen", args.include_num_input_tokens_seen, TOKEN_COUNTING
    )
    _check_choice("log_level", args.log_level, tuple(LOG_LEVELS))
    _check_choice("log_level_replica", args.log_level_replica, tuple(LOG_LEVELS))
    _check_choice("train_sampling_strategy", args.train_sampling_strategy, SAMPLING_STRATEGIES)
    if args.train_sampling_strategy == "batch_rebalance":
        raise ConfigurationError(
            refusal(
                "train_sampling_strategy='batch_rebalance'",
                "supported: 'random', 'sequential', 'group_by_length'",
            )
        )
    if args.dataloader_multiprocessing_context is not None:
        _check_choice(
            "dataloader_multiprocessing_context",
            args.dataloader_multiprocessing_context,
            START_METHODS,
        )


def _check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}.")


def _check_number(name: str, value: object, minimum: float) -> None:
    """A finite number: ``inf`` would train NaNs (a learning rate) or never end (epochs)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value >= minimum
    ):
        raise ConfigurationError(f"{name} must be a finite number >= {minimum}, got {value!r}.")


def _check_text(name: str, value: object, *, optional: bool = True) -> None:
    if (optional and value is None) or isinstance(value, str):
        return
    wanted = "a string or None" if optional else "a string"
    raise ConfigurationError(f"{name} must be {wanted}, got {value!r}.")


def _check_names(name: str, value: object, valid: tuple[str, ...] | None = None) -> None:
    """A list of strings (``label_names``), each one of ``valid`` when given."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{name} must be a list of strings, got {value!r}.")
    if valid is not None:
        for item in value:
            _check_choice(f"{name} entry", item, valid)


def _check_sizes(args: TrainingArguments) -> None:
    _check_int("per_device_train_batch_size", args.per_device_train_batch_size, 1)
    _check_int("per_device_eval_batch_size", args.per_device_eval_batch_size, 1)
    _check_int("gradient_accumulation_steps", args.gradient_accumulation_steps, 1)
    _check_int("eval_accumulation_steps", args.eval_accumulation_steps, 1, optional=True)
    _check_int("seed", args.seed, 0)
    _check_int("data_seed", args.data_seed, 0, optional=True)
    _check_number("num_train_epochs", args.num_train_epochs, 0)
    if isinstance(args.max_steps, bool) or not isinstance(args.max_steps, int):
        raise ConfigurationError(f"max_steps must be an integer, got {args.max_steps!r}.")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ConfigurationError(
            "max_steps must be a positive number of optimizer updates, or -1 to train for "
            f"num_train_epochs, got {args.max_steps}."
        )
    _check_int("save_total_limit", args.save_total_limit, 1, optional=True)


def _check_optimizer(args: TrainingArguments) -> None:
    _check_number("learning_rate", args.learning_rate, 0)
    _check_number("weight_decay", args.weight_decay, 0)
    _check_number("adam_epsilon", args.adam_epsilon, 0)
    _check_number("max_grad_norm", args.max_grad_norm, 0)
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(args, name)
        _check_number(name, value, 0)
        if value >= 1:
            raise ConfigurationError(f"{name} must be in [0, 1), got {value!r}.")
    check_optimization_arguments(args)


def _check_warmup(args: TrainingArguments) -> None:
    args.warmup_steps = _interval("warmup_steps", args.warmup_steps, required=False)


def _interval(name: str, value: object, *, required: bool) -> float:
    """An interval in steps: a ratio of the run below 1, else a whole number of updates."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value >= 0
    ):
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}.")
    if required and value == 0:
        raise ConfigurationError(
            f"{name} must be > 0 with the 'steps' strategy (a ratio of the run below 1, or a "
            "whole number of updates), got 0."
        )
    if value > 1:
        if value != int(value):
            raise ConfigurationError(f"{name} must be a whole number when above 1, got {value}.")
        return int(value)
    return value


def _check_intervals(args: TrainingArguments) -> None:
    steps = "steps"
    args.logging_steps = _interval(
        "logging_steps", args.logging_steps, required=args.logging_strategy == steps
    )
    args.save_steps = _interval("save_steps", args.save_steps, required=args.save_strategy == steps)
    _check_number("eval_delay", args.eval_delay, 0)
    if args.eval_strategy == steps and not args.eval_steps:
        if args.eval_steps is not None and args.eval_steps < 0:
            raise ConfigurationError(f"eval_steps must be a number >= 0, got {args.eval_steps}.")
        if not args.logging_steps:
            raise ConfigurationError(
                "eval_strategy 'steps' needs a non-zero eval_steps, or a non-zero logging_steps "
                "to copy it from."
            )
        args.eval_steps = args.logging_steps
    if args.eval_steps is not None:
        args.eval_steps = _interval(
            "eval_steps", args.eval_steps, required=args.eval_strategy == steps
        )


def _check_best_model(args: TrainingArguments) -> None:
    if args.load_best_model_at_end:
        _check_best_model_strategies(args)
    if args.save_strategy == "best" and args.eval_strategy == "no":
        raise ConfigurationError(
            "save_strategy 'best' saves after evaluations, so eval_strategy must be 'steps' or "
            "'epoch', got 'no'."
        )
    follows_metric = args.save_strategy == "best" or args.lr_scheduler_type in METRIC_SCHEDULERS
    if (args.load_best_model_at_end or follows_metric) and args.metric_for_best_model is None:
        args.metric_for_best_model = "loss"
    if args.metric_for_best_model is not None and args.greater_is_better is None:
        args.greater_is_better = not args.metric_for_best_model.endswith("loss")


def _check_best_model_strategies(args: TrainingArguments) -> None:
    if args.save_strategy == "best":
        return
    if args.eval_strategy != args.save_strategy:
        raise ConfigurationError(
            "load_best_model_at_end needs save_strategy to equal eval_strategy (or to be 'best'), "
            f"got save_strategy={args.save_strategy!r} and eval_strategy={args.eval_strategy!r}."
        )
    if args.eval_strategy == "no":
        raise ConfigurationError(
            "load_best_model_at_end needs evaluations: set eval_strategy and save_strategy to "
            "'steps' or 'epoch' (or save_strategy to 'best'), got 'no'."
        )
    if args.eval_strategy != "steps":
        return
    save, every = args.save_steps, args.eval_steps or 0
    if (save < 1) != (every < 1):
        raise ConfigurationError(
            "load_best_model_at_end needs save_steps to be a multiple of eval_steps, which cannot "
            f"be guaranteed when one is a ratio and the other is not (save_steps={save}, "
            f"eval_steps={every})."
        )
    scale = 1 if save >= 1 else 1_000_000  # ratios: compare in millionths, not in floats
    if round(save * scale) % max(1, round(every * scale)) != 0:
        raise ConfigurationError(
            "load_best_model_at_end needs save_steps to be a multiple of eval_steps, got "
            f"save_steps={save} and eval_steps={every}."
        )


def _check_precision(args: TrainingArguments) -> None:
    """transformers' precision rules; the device is asked only when a flag needs it."""
    if args.fp16 and args.bf16:
        raise ConfigurationError("fp16 and bf16 cannot both be True: set at most one of them.")
    if args.fp16_full_eval and args.bf16_full_eval:
        raise ConfigurationError(
            "fp16_full_eval and bf16_full_eval cannot both be True: set at most one of them."
        )
    _check_text("torch_compile_backend", args.torch_compile_backend)
    _check_text("torch_compile_mode", args.torch_compile_mode)
    if not (args.bf16 or args.bf16_full_eval or args.tf32):
        return
    import torch

    cuda = torch.cuda.is_available()
    bf16 = "bf16" if args.bf16 else "bf16_full_eval" if args.bf16_full_eval else None
    if bf16 and not args.use_cpu and not (cuda and torch.cuda.is_bf16_supported()):
        raise ConfigurationError(
            f"{bf16}=True needs a GPU with bfloat16 support (Ampere or newer); set "
            "use_cpu=True to use bfloat16 on the CPU."
        )
    if args.tf32 and not (
        cuda
        and torch.version.cuda is not None
        and torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8
    ):
        raise ConfigurationError(
            "tf32=True needs an Ampere or newer NVIDIA GPU; leave tf32 unset elsewhere."
        )


def _check_data(args: TrainingArguments) -> None:
    _check_int("dataloader_num_workers", args.dataloader_num_workers, 0)
    _check_int("dataloader_prefetch_factor", args.dataloader_prefetch_factor, 1, optional=True)
    for name in ("dataloader_prefetch_factor", "dataloader_persistent_workers"):
        if getattr(args, name) not in (None, False) and args.dataloader_num_workers == 0:
            raise ConfigurationError(
                f"{name} applies to worker processes only: set dataloader_num_workers > 0, or "
                f"leave {name} unset."
            )
    if (
        args.dataloader_multiprocessing_context is None
        and args.dataloader_num_workers > 1
        and _mps_available()
    ):
        args.dataloader_multiprocessing_context = "fork"  # transformers' default on Apple GPUs
    if args.label_names is not None:
        _check_names("label_names", args.label_names)
    _check_names("include_for_metrics", args.include_for_metrics, _METRICS_INPUTS)
    _check_text("length_column_name", args.length_column_name, optional=False)


def _mps_available() -> bool:
    import torch

    return torch.backends.mps.is_available()


def _check_report_to(value: object) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    raise ConfigurationError(
        f"report_to must be 'all', 'none', an integration name, or a list of names, got {value!r}."
    )
