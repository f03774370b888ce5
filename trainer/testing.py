"""Tiny models and data sets for tests and examples: seconds on a CPU, deterministic under a seed.

They follow the Hugging Face model contract the ``Trainer`` relies on: ``model(**batch)`` returns a
mapping with ``"loss"`` (when ``labels`` are in the batch) and ``"logits"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "LosslessModel",
    "RegressionDataset",
    "TinyConfig",
    "TinyRegressor",
    "TupleOutputRegressor",
]


class TinyConfig:
    """A stand-in for a model configuration: what ``RunStarted.hparams`` is filled from."""

    def __init__(self, in_features: int, hidden: int, dropout: float) -> None:
        self.in_features = in_features
        self.hidden = hidden
        self.dropout = dropout

    def to_dict(self) -> dict[str, Any]:
        """The hyper-parameters as plain data."""
        return {"in_features": self.in_features, "hidden": self.hidden, "dropout": self.dropout}


class RegressionDataset(Dataset[dict[str, torch.Tensor]]):
    """``y = x @ w + noise`` with a fixed seed, as a map-style data set of dict samples."""

    def __init__(self, length: int = 64, in_features: int = 4, seed: int = 0) -> None:
        if length < 1:
            raise ValueError(f"length must be a positive integer, got {length}")
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, in_features, generator=generator)
        weights = torch.linspace(-1.0, 1.0, in_features)
        noise = 0.1 * torch.randn(length, generator=generator)
        self.y = self.x @ weights + noise

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


class TinyRegressor(nn.Module):
    """A two-layer perceptron with dropout, so that resuming must restore RNG states to match."""

    def __init__(self, in_features: int = 4, hidden: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = TinyConfig(in_features, hidden, dropout)
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.body(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(logits, labels)
        return out


class TupleOutputRegressor(TinyRegressor):
    """The same model returning ``(loss, logits)``, the tuple form of the contract."""

    def forward(  # type: ignore[override]  # the tuple form is the point of this model
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        out = super().forward(x, labels)
        return (out["loss"], out["logits"]) if "loss" in out else (out["logits"],)


class LosslessModel(TinyRegressor):
    """Ignores its labels and never returns a loss: a user error the Trainer must report."""

    def forward(  # type: ignore[override]  # drops the loss on purpose
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> Mapping[str, torch.Tensor]:
        return {"logits": self.body(x).squeeze(-1)}
