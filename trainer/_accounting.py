"""What the loop counts besides the loss: label tokens per update, input tokens seen, flops.

Each count follows Hugging Face's rule (transformers 5.24), and each is decided once per run: a
feature that is off hands the loop ``None`` and costs nothing per micro-batch.

- **Items per update** (``num_items_in_batch``): with gradient accumulation, averaging the
  micro-batches' mean losses weights a micro-batch of 3 label tokens like one of 300. When the
  model takes loss keyword arguments (``**kwargs`` in its ``forward``, or an
  ``accepts_loss_kwargs`` attribute) or a ``compute_loss_func`` is given, the loop reads the whole
  accumulation window first and counts its label tokens that are not ``-100``; each micro-batch's
  loss is then a sum divided by that count, so the update is the mean over every token of the
  window. A causal LM's loss shifts its labels, so position 0 never counts; a collator's
  ``shift_labels`` is counted as it is.
- **Input tokens seen** (``include_num_input_tokens_seen``): ``"all"`` counts every element of the
  model's main input; ``"non_padding"`` sums the attention mask, else counts the tokens that are
  not the tokenizer's pad token, else falls back to all.
- **Flops**: a model's own ``floating_point_ops`` where it has one (transformers 4 models had
  it); otherwise ``6 * input tokens * parameters outside the embeddings`` for a model that can
  count its parameters (``num_parameters``), which is what transformers 5's ``Trainer`` computes
  now that its models no longer define ``floating_point_ops``. The parameter count is taken once
  per run, not once per micro-batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import structlog
import torch
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "accepts_loss_kwargs",
    "count_label_items",
    "flops_counter",
    "loss_shifts_labels",
    "token_counter",
]

logger = structlog.get_logger(__name__)

IGNORE_INDEX: Final = -100
"""The label value losses skip (padding, prompt tokens)."""

_CAUSAL_LOSS_TYPES: Final = frozenset(
    {"ForCausalLM", "ForConditionalGeneration", "CsmForConditionalGeneration"}
)
"""The ``loss_type`` names whose loss in transformers 5.24 shifts the labels by one."""


def accepts_loss_kwargs(model: nn.Module) -> bool:
    """Whether ``model`` takes ``num_items_in_batch``: its own ``accepts_loss_kwargs`` if it
    says, else whether its ``forward`` takes ``**kwargs``."""
    declared = getattr(model, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature (a C extension): say no
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss compares position ``i`` with label ``i + 1`` (a decoder-only LM);
    an encoder-decoder model's loss uses every label as it is."""
    if getattr(model, "loss_type", None) not in _CAUSAL_LOSS_TYPES:
        return False
    return not getattr(getattr(model, "config", None), "is_encoder_decoder", False)


def count_label_items(window: Sequence[Any], *, shift: bool) -> torch.Tensor | None:
    """The label tokens (not ``-100``) of a window of micro-batches, as an int64 tensor.

    ``None`` when the batches have no ``labels`` or their labels are not tensors (the losses are
    then scaled by the number of micro-batches instead).
    """
    if not window or not isinstance(window[0], Mapping) or "labels" not in window[0]:
        return None
    total: Any = 0
    try:
        for batch in window:
            labels = batch["shift_labels"] if "shift_labels" in batch else batch["labels"]
            if shift and "shift_labels" not in batch:
                labels = labels[..., 1:]
            total = total + labels.ne(IGNORE_INDEX).sum()
    except (TypeError, AttributeError, KeyError):
        return None
    return total if isinstance(total, torch.Tensor) else None


def _main_input_name(model: nn.Module) -> str:
    return str(getattr(model, "main_input_name", "input_ids"))


def token_counter(
    mode: str, model: nn.Module, pad_token_id: int | None
) -> Callable[[Mapping[str, Any]], int] | None:
    """How many input tokens a micro-batch adds to ``state.num_input_tokens_seen``.

    Args:
        mode: ``include_num_input_tokens_seen`` (``"all"``, ``"non_padding"`` or ``"no"``).
        model: the model, for its ``main_input_name`` (``"input_ids"`` when it names none).
        pad_token_id: the tokenizer's pad token, for ``"non_padding"`` batches without an
            attention mask.

    Returns ``None`` for ``"no"``. A batch without the main input adds nothing (said once).
    """
    if mode == "no":
        return None
    name = _main_input_name(model)
    warned: list[str] = []

    def count(batch: Mapping[str, Any]) -> int:
        tokens = batch.get(name)
        if tokens is None:
            if not warned:
                warned.append(name)
                logger.warning("tokens_not_counted", main_input_name=name, keys=sorted(batch))
            return 0
        if mode == "non_padding":
            mask = batch.get("attention_mask")
            if mask is not None:
                return int(mask.sum())
            if pad_token_id is not None:
                return int((tokens != pad_token_id).sum())
        return int(tokens.numel())

    return count


def flops_counter(model: nn.Module) -> Callable[[Mapping[str, Any]], float] | None:
    """The flops of one forward and backward pass over a micro-batch, or ``None`` when ``model``
    offers no way to count them (see the module docstring)."""
    own = getattr(model, "floating_point_ops", None)
    if callable(own):
        return lambda batch: float(own(batch))
    count_parameters = getattr(model, "num_parameters", None)
    if not callable(count_parameters):
        return None
    per_token = 6 * int(count_parameters(exclude_embeddings=True))
    name = _main_input_name(model)

    def count(batch: Mapping[str, Any]) -> float:
        tokens = batch.get(name)
        return 0.0 if tokens is None else float(tokens.numel() * per_token)

    return count
