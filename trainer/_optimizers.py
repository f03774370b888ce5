"""Optimizers: the class and settings each ``optim`` name stands for, and weight-decay groups.

Hugging Face's rules, so the same script trains the same numbers and the optimizer's state (its
``param_groups``, in checkpoints too) has the same shape in both trainers:

* Two parameter groups, always: the parameters that get ``weight_decay``, then the others with
  none (empty groups are kept). Biases and normalisation weights get none; they are recognised by
  name (``bias``, ``layernorm``, ``rmsnorm``, a ``norm`` or ``*_norm`` module) or by living in an
  ``nn.LayerNorm``. With the default ``weight_decay=0`` the second group costs the fused kernel
  one more launch per step (microseconds); it keeps checkpoints interchangeable.
* ``optim`` names a class and its keyword arguments (``optimizer_cls_and_kwargs``): the learning
  rate, Adam's betas and epsilon for AdamW, the parsed ``optim_args`` for SGD, Adagrad, RMSprop.
* ``adamw_torch_fused`` (v5's default) updates every tensor of a group in one kernel. Parameters
  torch has no fused kernel for (a device or dtype) get the unfused AdamW, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog
import torch
from torch import nn

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._optim_arguments import parse_optim_args

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = ["build_optimizer", "decay_parameter_names", "optimizer_cls_and_kwargs", "weight_groups"]

_log = structlog.get_logger(__name__)

_NO_DECAY_NAME: Final = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")
"""Lower-cased parameter names that never get weight decay (Hugging Face's patterns)."""

_TORCH_OPTIMIZERS: Final[Mapping[str, type[torch.optim.Optimizer]]] = {
    "adamw_torch_fused": torch.optim.AdamW,
    "adamw_torch": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay, in Hugging Face's order.

    A parameter is left out when it lives inside an ``nn.LayerNorm`` (below ``model`` itself) or
    its lower-cased name matches ``_NO_DECAY_NAME``. Names are ``named_parameters()``'s, with a
    shared parameter under each of its names.
    """
    return [
        name
        for name in _names_outside_layer_norms(model)
        if not _NO_DECAY_NAME.search(name.lower())
    ]


def _names_outside_layer_norms(module: nn.Module) -> Iterator[str]:
    for child_name, child in module.named_children():
        if isinstance(child, nn.LayerNorm):
            continue
        for name in _names_outside_layer_norms(child):
            yield f"{child_name}.{name}"
    for name, _ in module.named_parameters(recurse=False, remove_duplicate=False):
        yield name


def weight_groups(
    model: nn.Module, decay_names: list[str], weight_decay: float
) -> list[dict[str, Any]]:
    """The two parameter groups: trainable parameters named in ``decay_names``, then the rest.

    Args:
        model: the model whose trainable parameters (``requires_grad``) are grouped.
        decay_names: what ``Trainer.get_decay_parameter_names`` returned.
        weight_decay: the first group's decay; the second group's is 0.
    """
    decay = set(decay_names)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]


def optimizer_cls_and_kwargs(args: TrainingArguments) -> tuple[Any, dict[str, Any]]:
    """The optimizer class ``args.optim`` names and its keyword arguments (not the groups).

    Raises:
        ConfigurationError: ``optim`` is no name trainbus implements, ``optim_args`` holds a key
            the optimizer does not read, or ``adafactor`` is asked for without transformers.
    """
    extra = parse_optim_args(args.optim, args.optim_args)
    kwargs: dict[str, Any] = {"lr": args.learning_rate}
    if args.optim == "adafactor":
        return _adafactor(), {**kwargs, "scale_parameter": False, "relative_step": False}
    if args.optim in ("adamw_torch", "adamw_torch_fused"):
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        if args.optim == "adamw_torch_fused":
            kwargs["fused"] = True
    kwargs.update(extra)
    return _TORCH_OPTIMIZERS[args.optim], kwargs


def _adafactor() -> Any:
    """transformers' Adafactor; torch has none, and transformers is an optional dependency."""
    try:
        from transformers.optimization import Adafactor
    except ImportError:
        raise ConfigurationError(
            "optim='adafactor' uses transformers' Adafactor, and the transformers package is not "
            "installed (pip install transformers)."
        ) from None
    return Adafactor


def build_optimizer(
    model: nn.Module,
    optimizer_cls: Any,
    kwargs: Mapping[str, Any],
    groups: list[dict[str, Any]],
) -> torch.optim.Optimizer:
    """``optimizer_cls(groups, **kwargs)``, as Hugging Face's ``create_optimizer`` builds it.

    Args:
        model: the model being trained (handed to an optimizer factory).
        optimizer_cls: an optimizer class, or a factory: anything that is no optimizer class is
            called with no arguments and its result with ``(model, **kwargs)``.
        kwargs: the constructor's keyword arguments; a ``"params"`` entry replaces ``groups``.
        groups: the parameter groups (see ``weight_groups``).
    """
    settings = dict(kwargs)  # a copy: the caller's dict (optimizer_cls_and_kwargs) stays as given
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        built: torch.optim.Optimizer = optimizer_cls()(model, **settings)
        return built
    params = settings.pop("params", groups)
    if settings.get("fused"):
        try:
            return optimizer_cls(params, **settings)
        except RuntimeError as exc:  # no fused kernel for these parameters' device or dtype
            _log.warning("fused optimizer unavailable, using the unfused one", reason=str(exc))
            del settings["fused"]
    return optimizer_cls(params, **settings)
