"""The demo task: scikit-learn's bundled 8x8 handwritten digits and a small MLP.

Nothing is downloaded: the 1,797 images ship inside scikit-learn. Each function here is a
``module:function`` factory that ``trainbus train`` (and ``trainbus demo``) calls by name, so the
same task runs from a TOML file, from Python, or inside an async service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "DigitsConfig",
    "DigitsDataset",
    "DigitsMLP",
    "accuracy",
    "compute_metrics",
    "eval_dataset",
    "model",
    "train_dataset",
]

_SPLIT_SEED = 0
_EVAL_FRACTION = 0.2


class DigitsConfig:
    """The model's hyper-parameters; ``to_dict`` is what trackers log as the model config."""

    def __init__(self, hidden: int, dropout: float) -> None:
        self.hidden = hidden
        self.dropout = dropout

    def to_dict(self) -> dict[str, Any]:
        return {"in_features": 64, "hidden": self.hidden, "dropout": self.dropout, "classes": 10}


class DigitsMLP(nn.Module):
    """Two hidden layers; returns a dict with ``loss`` when labels are given, as HF models do."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = DigitsConfig(hidden=hidden, dropout=dropout)
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class DigitsDataset(Dataset[dict[str, torch.Tensor]]):
    """A split of the digits data as ``{"pixel_values", "labels"}`` items, scaled to [0, 1]."""

    def __init__(self, split: str, limit: int | None = None) -> None:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        from sklearn.datasets import load_digits

        data = load_digits()
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(data.target))
        n_eval = int(len(order) * _EVAL_FRACTION)
        index = order[:n_eval] if split == "eval" else order[n_eval:]
        if limit is not None:
            index = index[:limit]
        self.pixels = torch.tensor(data.data[index] / 16.0, dtype=torch.float32)
        self.labels = torch.tensor(data.target[index], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def model(hidden: int = 128) -> DigitsMLP:
    """A freshly initialised MLP (seed it through ``TrainingArguments.seed``)."""
    return DigitsMLP(hidden=hidden)


def train_dataset(limit: int | None = None) -> DigitsDataset:
    """80 % of the digits (1,438 images)."""
    return DigitsDataset("train", limit=limit)


def eval_dataset(limit: int | None = None) -> DigitsDataset:
    """The held-out 20 % (359 images)."""
    return DigitsDataset("eval", limit=limit)


def compute_metrics() -> Any:
    """The metric function for ``Trainer(compute_metrics=...)``: accuracy over the eval set."""
    return accuracy


def accuracy(eval_pred: Any) -> Mapping[str, float]:
    """Accuracy from an ``EvalPrediction`` (or a ``(predictions, label_ids)`` pair)."""
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred
    if isinstance(predictions, tuple | list):
        predictions = predictions[0]
    predicted = np.asarray(predictions).argmax(axis=-1)
    return {"accuracy": float((predicted == np.asarray(labels)).mean())}
