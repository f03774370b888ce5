"""The collator a ``Trainer`` uses when it is given none, and Hugging Face's default one.

As in Hugging Face: a tokenizer or a sequence feature extractor as ``processing_class`` means
rows of different lengths, so the default is transformers' ``DataCollatorWithPadding`` around
it; anything else (no processing class, an image processor, a multimodal processor) gets
`default_data_collator`. transformers is not a dependency: it is looked up among the loaded
modules, where it must be if ``processing_class`` is one of its classes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from trainbus.bus._errors import ConfigurationError

__all__ = ["DataCollator", "default_collator_for", "default_data_collator"]

DataCollator = Callable[[list[Any]], Any]


def default_collator_for(processing_class: object) -> DataCollator:
    """Hugging Face's choice of collator for ``processing_class`` (see the module docstring)."""
    transformers = sys.modules.get("transformers")
    if processing_class is None or transformers is None:
        return default_data_collator
    padded = (transformers.PreTrainedTokenizerBase, transformers.SequenceFeatureExtractor)
    if isinstance(processing_class, padded):
        collator: DataCollator = transformers.DataCollatorWithPadding(processing_class)
        return collator
    return default_data_collator


def default_data_collator(features: list[Any]) -> dict[str, Any]:
    """Stack a list of samples into one dict of tensors, as Hugging Face's default collator does.

    Keys come from the first sample. ``label`` or ``label_ids`` becomes ``labels`` (long for
    integers, float otherwise); tensors are stacked, NumPy arrays and numbers (and lists of them)
    become tensors; ``None`` values and strings are left out. Samples may be dicts, or objects
    whose attributes are the keys (``vars()``).
    """
    if not features:
        raise ValueError(
            "default_data_collator got an empty list of samples; expected at least one"
        )
    if not isinstance(features[0], Mapping):
        features = [_as_dict(feature) for feature in features]
    first = features[0]
    batch: dict[str, Any] = {}
    label_key = next((k for k in ("label", "label_ids") if first.get(k) is not None), None)
    if label_key is not None:
        batch["labels"] = _labels(label_key, [feature[label_key] for feature in features])
    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        values = [feature[key] for feature in features]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        else:
            batch[key] = torch.tensor(values)
    return batch


def _labels(key: str, values: list[Any]) -> torch.Tensor:
    """Hugging Face's typing of labels: from the first sample's ``label`` (or first label id),
    long when it is an integer and float otherwise; tensors of ``label_ids`` are stacked."""
    first = values[0]
    if key == "label":
        probe = first.item() if isinstance(first, torch.Tensor) else first
    elif isinstance(first, torch.Tensor):
        return torch.stack(values)
    else:
        probe = first[0]
    integer = isinstance(probe, int | np.integer)
    return torch.tensor(values, dtype=torch.long if integer else torch.float)


def _as_dict(feature: object) -> dict[str, Any]:
    try:
        return dict(vars(feature))
    except TypeError:
        raise ConfigurationError(
            "default_data_collator expects each sample to be a dict (or an object with "
            f"attributes), got {type(feature).__name__}; pass data_collator= to the Trainer "
            "for other shapes"
        ) from None
