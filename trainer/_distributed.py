"""Several processes, one run: the ``torchrun`` glue the loop needs, and nothing when alone.

With ``WORLD_SIZE`` above one the loop trains a ``DistributedDataParallel`` wrapper of the model,
each rank reads its own shard of every epoch's permutation, and the five control flags are
merged across ranks (logical or) at the loop's polling points: a stop raised by a callback on any
rank stops every rank at the same step, so no rank is left waiting in a collective. The logged
loss is the mean over ranks, computed only when a log entry is written. Evaluation is sharded:
each rank evaluates its share of the batches of an evaluation set with a length, and the
evaluation loop gathers every step's predictions, labels and losses back into the data set's
order (``trainbus.trainer._gather.gather_rows``), so every rank computes the metrics one process
evaluating the whole set would, and early stopping and "best" tracking agree.

Checkpoints are written by ``args.should_save`` ranks (world rank zero by default); the RNG
states of all ranks are gathered there first and written as ``rng_state_<rank>.pth``, so a
checkpoint is still renamed into place in one piece.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainbus.trainer._state import TrainerControl

__all__ = ["Distributed"]

_FLAGS = (
    "should_training_stop",
    "should_epoch_stop",
    "should_save",
    "should_evaluate",
    "should_log",
)


class Distributed:
    """The process group as the loop sees it; every method is a no-op in a single process."""

    def __init__(self, world_size: int, rank: int, device: torch.device) -> None:
        self.world_size = world_size
        self.rank = rank
        self.device = device
        self.enabled = world_size > 1

    def setup(self) -> None:
        """Join the process group ``torchrun`` described in the environment, once."""
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run forward/backward through: DDP when distributed, else ``model``."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def no_sync(self, wrapped: nn.Module, skip: bool) -> Iterator[None]:
        """Skip the gradient all-reduce of a micro-batch that is not the last of its window."""
        if skip and isinstance(wrapped, DistributedDataParallel):
            with wrapped.no_sync():
                yield
        else:
            yield

    def merge(self, control: TrainerControl) -> None:
        """Raise on every rank each flag raised on any rank (one small all-reduce)."""
        if not self.enabled:
            return
        flags = torch.tensor(
            [int(getattr(control, name)) for name in _FLAGS], device=self._comm_device()
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        for name, value in zip(_FLAGS, flags.tolist(), strict=True):
            setattr(control, name, bool(value))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (a host sync: call it at logging steps only)."""
        if not self.enabled:
            return value
        total = value.detach().clone().to(self._comm_device())
        dist.all_reduce(total)
        return total / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over ranks, on this rank's device (``value`` alone)."""
        if not self.enabled:
            return value
        total = value.detach().clone().to(self._comm_device())
        dist.all_reduce(total)
        return total.to(value.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank (after a checkpoint, before reading it back)."""
        if self.enabled:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")
