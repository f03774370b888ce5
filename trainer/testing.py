"""Tiny models and data sets for tests and examples: seconds on a CPU, deterministic under a seed;
and ``CollectiveCounter``, which counts a distributed run's collectives per update.

They follow the Hugging Face model contract the ``Trainer`` relies on: ``model(**batch)`` returns a
mapping with ``"loss"`` (when ``labels`` are in the batch) and ``"logits"``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "CollectiveCounter",
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


class CollectiveCounter:
    """Counts a distributed run's collectives per update: DDP's gradient buckets apart from every
    other collective (the control-flag agreement, gathers, broadcasts).

    Pass ``callback`` to the ``Trainer`` and train inside ``counting(trainer)``: the Python-level
    collectives of ``torch.distributed`` are wrapped for the block, and DDP's own all-reduce is
    told apart through a communication hook registered when training begins. Counts are taken at
    ``on_step_end`` (a callback on ``on_step_begin`` would itself add an agreement).
    """

    COLLECTIVES = (
        "all_reduce",
        "broadcast",
        "all_gather",
        "all_gather_object",
        "broadcast_object_list",
        "all_gather_into_tensor",
        "reduce_scatter_tensor",
        "barrier",
    )
    """The Python-level collectives the trainer could call."""

    def __init__(self) -> None:
        from trainbus.trainer._callbacks import TrainerCallback

        self.counts = {"ddp": 0, "other": 0}
        self.marks: list[dict[str, int]] = []
        self._trainer: Any = None
        counter = self

        class _Count(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                counter._trainer.model_wrapped.register_comm_hook(None, counter._ddp_hook)

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                counter.marks.append(dict(counter.counts))

        def ddp_hook(group: Any, bucket: Any) -> Any:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            counter.counts["ddp"] += 1
            counter.counts["other"] -= 1  # the hook's all_reduce, counted as "other", is DDP's
            return allreduce_hook(group, bucket)

        ddp_hook.__annotations__ = {}  # DDP checks any it finds, and these are strings here
        self._ddp_hook = ddp_hook
        self.callback = _Count()

    @contextlib.contextmanager
    def counting(self, trainer: Any) -> Iterator[None]:
        """Count ``trainer``'s collectives for the block (restored afterwards)."""
        import torch.distributed as dist

        self._trainer = trainer
        originals = {name: getattr(dist, name) for name in self.COLLECTIVES}

        def wrapped(name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.counts["other"] += 1
                return originals[name](*args, **kwargs)

            return call

        for name in self.COLLECTIVES:
            setattr(dist, name, wrapped(name))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)

    def per_update(self) -> dict[str, list[int]]:
        """DDP's and the other collectives of each update after the first, in order."""
        return {
            kind: [after[kind] - before[kind] for before, after in itertools.pairwise(self.marks)]
            for kind in ("ddp", "other")
        }
