"""Small rules the loop applies around a run: input checks, best-metric tracking, run identity.

Kept out of ``trainbus.trainer._trainer`` so that the loop reads as the sequence of events it
publishes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._secrets import redact
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._state import TrainerState

__all__ = [
    "best_metric_key",
    "check_arguments",
    "check_model_source",
    "improved",
    "json_safe",
    "record_best",
    "run_config",
]


def check_arguments(args: object, eval_dataset: object) -> None:
    """Refuse what cannot work before anything runs (HF: an eval strategy needs eval data)."""
    if not isinstance(args, TrainingArguments):
        raise ConfigurationError(
            f"args must be a trainer.TrainingArguments, got {type(args).__name__}"
        )
    if args.eval_strategy != "no" and eval_dataset is None:
        raise ConfigurationError(
            f"eval_strategy={args.eval_strategy!r} needs an eval_dataset: pass "
            "Trainer(eval_dataset=...) or set eval_strategy='no'"
        )
    if args.eval_on_start and eval_dataset is None:
        raise ConfigurationError(
            "eval_on_start=True needs an eval_dataset: pass Trainer(eval_dataset=...)"
        )


def check_model_source(model: object, model_init: object, optimizers: object) -> None:
    """One source of weights: ``model`` or ``model_init`` (which a ``train()`` calls again, so
    an optimizer made for the first model's parameters cannot be passed with it)."""
    if model is None and model_init is None:
        raise ConfigurationError("Trainer needs a model: pass model=... or model_init=...")
    if model is not None and model_init is not None:
        raise ConfigurationError(
            "Trainer takes model or model_init, not both: model_init builds the model itself"
        )
    if model_init is not None and not callable(model_init):
        raise ConfigurationError(
            f"model_init must be a callable returning the model, got {type(model_init).__name__}"
        )
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (
        model_init is not None
        and isinstance(optimizers, tuple)
        and any(part is not None for part in optimizers)
    ):
        raise ConfigurationError(
            "optimizers=(...) cannot be used with model_init: every train() builds a new model, "
            "and the optimizer would still update the old one's parameters; leave optimizers out "
            "(or override create_optimizer_and_scheduler)"
        )


def best_metric_key(args: TrainingArguments) -> str | None:
    """The metrics key best-model tracking reads (``eval_`` added), or ``None`` when off."""
    name = args.metric_for_best_model
    if name is None:
        return None
    return name if name.startswith("eval_") else f"eval_{name}"


def improved(args: TrainingArguments, value: Any, best: float | None) -> bool:
    """Whether ``value`` strictly beats ``best`` in the direction ``greater_is_better`` says."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if _greater_is_better(args) else value < best


def _greater_is_better(args: TrainingArguments) -> bool:
    if args.greater_is_better is not None:
        return args.greater_is_better
    return not str(args.metric_for_best_model).endswith("loss")


def record_best(
    args: TrainingArguments, state: TrainerState, metrics: Mapping[str, Any], *, update: bool
) -> bool:
    """Best-metric tracking after an evaluation (HF spec §6.4); returns "is this a new best".

    A tracked metric the evaluation did not produce is a configuration error naming what it did
    produce, also for ``eval_on_start`` (``update=False``), where nothing else is recorded.
    """
    key = best_metric_key(args)
    if key is None:
        return False
    if key not in metrics:
        raise ConfigurationError(
            f"metric_for_best_model={args.metric_for_best_model!r}: evaluation produced no "
            f"{key!r}; the metrics it produced are {sorted(metrics)}"
        )
    if not update:
        return False
    if state.best_metric is None:  # HF starts from the worst value, so NaN never counts as best
        state.best_metric = -math.inf if _greater_is_better(args) else math.inf
    if not improved(args, metrics[key], state.best_metric):
        return False
    state.best_metric = float(metrics[key])
    if args.save_strategy in ("steps", "epoch", "best"):
        state.best_global_step = state.global_step
    return True


def json_safe(value: Any) -> Any:
    """Plain JSON data: containers walked, numbers and strings kept, anything else as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


def run_config(
    args: TrainingArguments, model: nn.Module, *, report_to: Sequence[str] | None = None
) -> dict[str, Any]:
    """The fields of ``RunStarted``: arguments and model config, secrets masked.

    The event goes to the journal on disk and to every sink, so secrets are masked here, once,
    before anything sees it: argument fields as ``to_dict`` names them (``"<HUB_TOKEN>"``), and
    any secret-named key or URL password in the model config or the arguments' values.

    Args:
        args: the trainer's arguments.
        model: the model, whose ``config`` (if any) becomes ``hparams``.
        report_to: the integrations the launcher started (``"all"`` resolved). They replace
            ``args.report_to`` in the published arguments, as transformers normalises the field
            to the list of integrations it runs, so every tracker records the names in use.
    """
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    hparams = json_safe(to_dict()) if callable(to_dict) else {}
    arguments = json_safe(args.to_dict())
    if report_to is not None:
        arguments["report_to"] = list(report_to)
    return {
        "run_name": args.run_name or "",
        "output_dir": args.output_dir,
        "world_size": args.world_size,
        "config": redact(arguments),
        "hparams": redact(hparams),
    }
