"""What is done to the model before training: TF32, activation checkpointing, ``torch.compile``.

Each switch is checked when the ``Trainer`` is built (``check_model_setup``), so a model or a
machine that cannot honour it fails before any data is read, with the field named. The work is
done where transformers does it: TF32 when the arguments are taken (``configure_tf32``, a
process-wide switch, as in transformers), activation checkpointing at the start of every
``train()`` before the optimizer is built (``enable_activation_checkpointing``), and compilation
last, around the module forward and backward run through (``compile_model``), so the optimizer,
the checkpoints and evaluation keep using the plain model and its parameters.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._arguments import TrainingArguments

__all__ = [
    "check_model_setup",
    "compile_model",
    "configure_tf32",
    "enable_activation_checkpointing",
    "tf32_available",
]

_CHECKPOINTING_ONLY: frozenset[str] = frozenset({"every_n_layers", "offload"})
"""Keys of ``activation_checkpointing_kwargs`` the model's method takes itself; the rest go to
``torch.utils.checkpoint.checkpoint``."""


def tf32_available() -> bool:
    """Whether this process drives a CUDA GPU with TF32 matmuls (Ampere or newer)."""
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return False
    return torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8


def configure_tf32(args: TrainingArguments) -> None:
    """Switch TF32 on or off for the process, as transformers does when it reads its arguments.

    ``tf32=True`` without a GPU that has TF32 was refused with the arguments
    (``_argument_checks``); ``tf32=False`` turns it off where it exists; left unset,
    ``torch_compile`` turns it on (unless ``fp16`` without ``bf16``), since compiled kernels gain
    most from it.
    """
    wanted = args.tf32
    if wanted is None and args.torch_compile and (not args.fp16 or args.bf16):
        wanted = True
    if wanted is not None and tf32_available():
        # The process-wide switch transformers sets too (torch >= 2.9); not in torch's stubs.
        torch.backends.fp32_precision = "tf32" if wanted else "ieee"  # type: ignore[attr-defined]


def check_model_setup(args: TrainingArguments, model: nn.Module) -> None:
    """Refuse, before training, what ``model`` or torch cannot do of what ``args`` ask."""
    if args.activation_checkpointing:
        _checkpointing_method(model)
    if args.torch_compile:
        try:  # torch checks backend and mode when asked to compile, not when it first runs
            compile_model(nn.Identity(), args)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"torch_compile_backend={args.torch_compile_backend!r} with torch_compile_mode="
                f"{args.torch_compile_mode!r} cannot compile: {exc}"
            ) from exc


def enable_activation_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    """Have ``model`` recompute its layers' activations in backward (transformers' own method).

    ``every_n_layers`` and ``offload`` go to the model's method; every other key of ``kwargs``
    to ``torch.utils.checkpoint.checkpoint``. transformers' default for those is
    ``use_reentrant=False``, which the model's method applies when we pass none.
    """
    method, name = _checkpointing_method(model)
    rest = dict(kwargs or {})
    own = {key: rest.pop(key) for key in _CHECKPOINTING_ONLY if key in rest}
    if name == "gradient_checkpointing_enable":
        warnings.warn(
            f"{type(model).__name__} only defines gradient_checkpointing_enable(), which "
            "transformers deprecates; define activation_checkpointing_enable() instead.",
            FutureWarning,
            stacklevel=3,
        )
        method(gradient_checkpointing_kwargs=rest or None, **own)
    else:
        method(activation_checkpointing_kwargs=rest or None, **own)


def compile_model(module: nn.Module, args: TrainingArguments) -> nn.Module:
    """``module`` compiled with the arguments' backend and mode, or ``module`` itself when off."""
    if not args.torch_compile:
        return module
    backend = args.torch_compile_backend or "inductor"  # TrainingArguments fills it in
    compiled: nn.Module = torch.compile(  # type: ignore[assignment]  # returns a callable union
        module, backend=backend, mode=args.torch_compile_mode
    )
    return compiled


def _checkpointing_method(model: nn.Module) -> tuple[Any, str]:
    """The model's checkpointing switch and its name, or a `ConfigurationError` saying why not."""
    if getattr(model, "supports_gradient_checkpointing", True) is False:
        raise ConfigurationError(
            f"gradient_checkpointing=True, but {type(model).__name__} does not support activation "
            "checkpointing (supports_gradient_checkpointing is False)."
        )
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        method = getattr(model, name, None)
        if callable(method):
            return method, name
    raise ConfigurationError(
        f"gradient_checkpointing=True needs a model with activation_checkpointing_enable() (a "
        f"transformers PreTrainedModel); {type(model).__name__} has none. Wrap the layers in "
        "torch.utils.checkpoint.checkpoint yourself, or set gradient_checkpointing=False."
    )
