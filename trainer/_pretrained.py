"""The model files of a checkpoint or a saved model: what ``from_pretrained`` reads back.

transformers' ``Trainer`` writes a model that has ``save_pretrained`` (every ``PreTrainedModel``)
with that method: ``config.json`` and ``model.safetensors`` (plus ``generation_config.json`` for
generative models), which ``AutoModel….from_pretrained(directory)`` loads. Any other module gets its
``state_dict`` as ``model.safetensors`` with the ``{"format": "pt"}`` metadata transformers' loaders
look for. Beside the model goes the ``processing_class`` (tokenizer, processor, feature extractor)
through its own ``save_pretrained``, or, when there is none, the tokenizer the data collator holds
(``DataCollatorWithPadding(tokenizer)``), as transformers does; ``AutoTokenizer.from_pretrained``
then reads the same directory.

trainbus never imports transformers: a model is "pretrained" by what it offers, which is exactly
what the call needs (``save_pretrained`` and a ``config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import safetensors.torch
from torch import nn

__all__ = ["WEIGHTS_NAME", "Pretrained", "Saveable", "write_model", "write_processing_class"]

WEIGHTS_NAME: Final = "model.safetensors"
_FORMAT: Final = {"format": "pt"}
"""safetensors metadata transformers requires of a weights file it did not write itself."""


@runtime_checkable
class Saveable(Protocol):
    """Anything that writes itself into a directory: tokenizers, processors, models."""

    def save_pretrained(self, save_directory: Any, /, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Pretrained(Saveable, Protocol):
    """A model with a configuration that ``save_pretrained`` writes next to its weights."""

    config: Any


def write_model(directory: Path, model: nn.Module) -> None:
    """Write ``model`` into ``directory`` (which exists) as ``from_pretrained`` reads it."""
    if isinstance(model, Pretrained):
        model.save_pretrained(str(directory))
        return
    safetensors.torch.save_model(model, str(directory / WEIGHTS_NAME), metadata=_FORMAT)


def write_processing_class(directory: Path, processing_class: Any, data_collator: Any) -> None:
    """Save the processing class beside the model, else the data collator's tokenizer if any."""
    if processing_class is None:
        processing_class = getattr(data_collator, "tokenizer", None)
    if isinstance(processing_class, Saveable):
        processing_class.save_pretrained(str(directory))
