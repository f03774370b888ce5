"""`TrainingArguments`: the run's configuration, under Hugging Face's names and defaults.

Users' Hugging Face callbacks read ``args.<field>`` directly, so field names, defaults and the
derived values filled in by ``__post_init__`` follow ``transformers`` 5.x. Three deliberate
differences: ``report_to`` defaults to ``"all"`` and is kept raw (the orchestrator resolves the
names); every bad value (a NaN or an infinity included) raises a `ConfigurationError` (a
`ValueError`) whose message names the field, where Hugging Face sometimes asserts or fails later;
and one field of our own, ``resume_only_model``, says that resuming from a checkpoint without its
optimizer, scheduler or RNG files is meant (Hugging Face skips them silently; we refuse without it).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from trainbus.bus import _world
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._secrets import is_secret

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOGGING_STRATEGIES",
    "OPTIMIZERS",
    "SAVE_STRATEGIES",
    "SCHEDULER_TYPES",
    "TOKEN_COUNTING",
    "TrainingArguments",
]

LOGGING_STRATEGIES: Final = ("no", "steps", "epoch")
"""Valid values of ``logging_strategy`` and ``eval_strategy``."""
SAVE_STRATEGIES: Final = ("no", "steps", "epoch", "best")
SCHEDULER_TYPES: Final = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS: Final = ("adamw_torch_fused", "adamw_torch")
"""Valid values of ``optim``: torch's AdamW, fused (Hugging Face v5's default) or not."""
TOKEN_COUNTING: Final = ("all", "non_padding", "no")
"""Valid values of ``include_num_input_tokens_seen`` (``True``/``False`` mean "all"/"no")."""


def _plain(value: Any) -> Any:
    """Turn a `transformers` str-enum (``IntervalStrategy.STEPS``) into its plain string."""
    return value.value if isinstance(value, enum.Enum) else value


@dataclasses.dataclass(repr=False)
class TrainingArguments:
    """Everything a run is configured with; mutable because Hugging Face callbacks may edit it."""

    output_dir: str = "trainer_output"
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0
    warmup_ratio: float | None = None
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    logging_nan_inf_filter: bool = True
    log_on_each_node: bool = True
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    save_on_each_node: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    disable_tqdm: bool | None = None
    report_to: str | list[str] = "all"
    run_name: str | None = None
    project: str = "huggingface"
    seed: int = 42
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = False
    restore_callback_states_from_checkpoint: bool = False
    resume_from_checkpoint: str | None = None
    resume_only_model: bool = False
    """Resume from a checkpoint that lacks the optimizer, scheduler or RNG files (one written
    with ``save_only_model``): load the weights and ``trainer_state.json`` only, and start the
    optimizer and learning-rate schedule afresh. Without it such a resume is an error, since the
    run would silently diverge from the one that wrote the checkpoint. Not a Hugging Face field
    (Hugging Face skips the missing files without a word); named after ``save_only_model``."""
    include_num_input_tokens_seen: str | bool = "no"
    average_tokens_across_devices: bool = True
    """With several ranks, divide each loss by the label tokens of every rank's micro-batches
    (one all-reduce per update), not by this rank's alone."""
    skip_memory_metrics: bool = True
    use_cpu: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None

    def __post_init__(self) -> None:
        raw_dir: object = self.output_dir
        if raw_dir is None:  # Hugging Face's own default spelling
            raw_dir = "trainer_output"
        if not isinstance(raw_dir, str | os.PathLike) or not os.fspath(raw_dir):
            raise ConfigurationError(f"output_dir must be a non-empty path, got {raw_dir!r}.")
        self.output_dir = os.path.expanduser(os.fspath(raw_dir))
        self.logging_strategy = _plain(self.logging_strategy)
        self.eval_strategy = _plain(self.eval_strategy)
        self.save_strategy = _plain(self.save_strategy)
        self.lr_scheduler_type = _plain(self.lr_scheduler_type)
        self.optim = _plain(self.optim)
        self.report_to = _plain(self.report_to)
        if isinstance(self.include_num_input_tokens_seen, bool):
            self.include_num_input_tokens_seen = (
                "all" if self.include_num_input_tokens_seen else "no"
            )
        if self.disable_tqdm is None:
            # Same rule as Hugging Face: a logger quieter than WARNING means "no progress bars".
            self.disable_tqdm = logging.getLogger("trainer").getEffectiveLevel() > logging.WARNING
        _validate(self)

    def __repr__(self) -> str:
        # Arguments end up in logs and tracebacks: never show a secret there.
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields for checkpoints and trackers; secrets become ``"<FIELD_NAME>"``."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if is_secret(field.name) and value is not None:
                value = f"<{field.name.upper()}>"
            elif isinstance(value, list):
                value = list(value)
            out[field.name] = value
        return out

    def to_json_string(self) -> str:
        """The arguments as indented JSON, as Hugging Face writes ``training_args`` text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingArguments:
        """Build from a TOML/JSON table, refusing keys we do not know instead of ignoring them."""
        known = [field.name for field in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(
                    f"Unknown training argument {key!r}: TrainingArguments has no such field.{hint}"
                )
        return cls(**dict(data))

    # --- derived values Hugging Face callbacks read -----------------------------------------

    @property
    def n_gpu(self) -> int:
        """Devices this process drives: one CUDA device per process, or none on CPU."""
        import torch

        return 1 if torch.cuda.is_available() and not self.use_cpu else 0

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size * max(1, self.n_gpu)

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size * max(1, self.n_gpu)

    @property
    def world_size(self) -> int:
        return _world.world_size()

    @property
    def process_index(self) -> int:
        return _world.world_rank()

    @property
    def local_process_index(self) -> int:
        return _world.local_rank()

    @property
    def should_log(self) -> bool:
        """Whether this process writes logs: local zero per node, or only world zero."""
        if self.log_on_each_node:
            return self.local_process_index == 0
        return self.process_index == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints: world zero, or local zero per node."""
        if self.save_on_each_node:
            return self.local_process_index == 0
        return self.process_index == 0

    @property
    def device(self) -> torch.device:
        """The ``torch.device`` this process trains on."""
        import torch

        if self.use_cpu or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_process_index)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up length in updates: ``warmup_steps`` when >= 1, else that ratio of the run."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_steps)


# --- validation -------------------------------------------------------------------------------


def _validate(args: TrainingArguments) -> None:
    """Check every field once, filling in Hugging Face's derived defaults along the way."""
    _check_flags(args)
    _check_choice("logging_strategy", args.logging_strategy, LOGGING_STRATEGIES)
    _check_choice("eval_strategy", args.eval_strategy, LOGGING_STRATEGIES)
    _check_choice("save_strategy", args.save_strategy, SAVE_STRATEGIES)
    _check_choice("lr_scheduler_type", args.lr_scheduler_type, SCHEDULER_TYPES)
    _check_choice("optim", args.optim, OPTIMIZERS)
    _check_choice(
        "include_num_input_tokens_seen", args.include_num_input_tokens_seen, TOKEN_COUNTING
    )
    _check_sizes(args)
    _check_optimizer(args)
    _check_warmup(args)
    _check_intervals(args)
    _check_best_model(args)
    _check_report_to(args.report_to)
    if args.eval_strategy != "no":
        args.do_eval = True


def _check_flags(args: TrainingArguments) -> None:
    """Yes/no fields must be real booleans: a TOML string "false" would otherwise read as true."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        optional = field.type == "bool | None"
        if (field.type == "bool" or optional) and not isinstance(value, bool):
            if optional and value is None:
                continue
            raise ConfigurationError(f"{field.name} must be true or false, got {value!r}.")


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        choices = ", ".join(repr(v) for v in valid)
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}.")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_number(name: str, value: object, minimum: float) -> None:
    """A finite number: ``inf`` would train NaNs (a learning rate) or never end (epochs)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value >= minimum
    ):
        raise ConfigurationError(f"{name} must be a finite number >= {minimum}, got {value!r}.")


def _check_sizes(args: TrainingArguments) -> None:
    _check_int("per_device_train_batch_size", args.per_device_train_batch_size, 1)
    _check_int("per_device_eval_batch_size", args.per_device_eval_batch_size, 1)
    _check_int("gradient_accumulation_steps", args.gradient_accumulation_steps, 1)
    _check_int("dataloader_num_workers", args.dataloader_num_workers, 0)
    _check_int("seed", args.seed, 0)
    _check_number("num_train_epochs", args.num_train_epochs, 0)
    if isinstance(args.max_steps, bool) or not isinstance(args.max_steps, int):
        raise ConfigurationError(f"max_steps must be an integer, got {args.max_steps!r}.")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ConfigurationError(
            "max_steps must be a positive number of optimizer updates, or -1 to train for "
            f"num_train_epochs, got {args.max_steps}."
        )
    if args.save_total_limit is not None:
        _check_int("save_total_limit", args.save_total_limit, 1)


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


def _check_warmup(args: TrainingArguments) -> None:
    if args.warmup_ratio is not None:
        _check_number("warmup_ratio", args.warmup_ratio, 0)
        if args.warmup_ratio > 1:
            raise ConfigurationError(f"warmup_ratio must be in [0, 1], got {args.warmup_ratio}.")
        if args.warmup_steps:
            raise ConfigurationError(
                "Set either warmup_steps or warmup_ratio, not both "
                f"(got warmup_steps={args.warmup_steps}, warmup_ratio={args.warmup_ratio})."
            )
        warnings.warn(
            "warmup_ratio is deprecated; pass the ratio as warmup_steps (a float below 1).",
            FutureWarning,
            stacklevel=4,
        )
        args.warmup_steps = args.warmup_ratio
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
    if (args.load_best_model_at_end or args.save_strategy == "best") and (
        args.metric_for_best_model is None
    ):
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


def _check_report_to(value: object) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    raise ConfigurationError(
        f"report_to must be 'all', 'none', an integration name, or a list of names, got {value!r}."
    )
