"""Several processes, one run: the ``torchrun`` glue the loop needs, and nothing when alone.

With ``WORLD_SIZE`` above one the loop trains a ``DistributedDataParallel`` wrapper of the model,
each rank reads its own shard of every epoch's permutation, and the five control flags are
merged across ranks (logical or) at the loop's decision points (``trainbus.trainer._loop``): a
flag raised by a callback on any rank is raised on every rank before anything acts on it, so no
rank is left waiting in a collective another rank skipped. The logged loss is the mean over
ranks, computed only when a log entry is written. Evaluation is sharded: each rank evaluates its
share of the batches of an evaluation set with a length, and the evaluation loop gathers every
step's predictions, labels and losses back into the data set's order
(``trainbus.trainer._gather.gather_rows``), so every rank computes the metrics one process
evaluating the whole set would, and early stopping and "best" tracking agree.

The flags travel as a small CPU tensor. On CPU ranks that is the default (gloo) group; when the
default group is NCCL, a gloo group made at setup carries them instead, so agreeing on the flags
never waits for the GPU's queue (a ``.tolist()`` of a CUDA tensor would, at every update).

Every collective goes through ``_collective``, the one place a backend's failure (a rank that
died, raised or was killed closes its connections) becomes a ``DistributedError`` naming what
this rank was doing; the process group's timeout is ``ddp_timeout`` (1800 s by default, as
transformers'), the last resort for a rank that hangs without dying.

Checkpoints are written by ``args.should_save`` ranks (world rank zero by default); the RNG
states of all ranks are gathered there first and written as ``rng_state_<rank>.pth``, so a
checkpoint is still renamed into place in one piece.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Final

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainbus.bus._errors import DistributedError
from trainbus.trainer._state import TrainerControl

__all__ = ["FLAGS", "Distributed", "cpu_group"]

FLAGS: Final = (
    "should_training_stop",
    "should_epoch_stop",
    "should_save",
    "should_evaluate",
    "should_log",
)
"""The control flags agreed across ranks, in the order they travel."""

DEFAULT_TIMEOUT: Final = timedelta(seconds=1800)
"""The process group's timeout when none is given (``ddp_timeout``'s default)."""


class Distributed:
    """The process group as the loop sees it; every method is a no-op in a single process.

    Args:
        world_size: the number of ranks (``WORLD_SIZE``).
        rank: this process's world rank.
        device: this rank's device; its type chooses the backend (NCCL for CUDA, else gloo).
        timeout: how long a collective may wait for the other ranks (``ddp_timeout``).
    """

    def __init__(
        self,
        world_size: int,
        rank: int,
        device: torch.device,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        self.world_size = world_size
        self.rank = rank
        self.device = device
        self.timeout = timeout
        self.enabled = world_size > 1
        self._flag_group: Any = None
        """The group the flags travel on: ``None`` for the default one (gloo), else a gloo one."""
        self.doing = "setting up"
        """What the loop is at, named in the error when a collective fails (``at``)."""

    def setup(self) -> None:
        """Join the process group ``torchrun`` described in the environment, once."""
        if not self.enabled:
            return
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            with self._collective("joining the process group"):
                dist.init_process_group(backend=backend, timeout=self.timeout)
        if self._flag_group is None:
            with self._collective("making the gloo group the control flags travel on"):
                self._flag_group = cpu_group(self.timeout)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run forward/backward through: DDP when distributed, else ``model``."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)  # its own errors are clear

    @contextlib.contextmanager
    def no_sync(self, wrapped: nn.Module, skip: bool) -> Iterator[None]:
        """Skip the gradient all-reduce of a micro-batch that is not the last of its window."""
        if skip and isinstance(wrapped, DistributedDataParallel):
            with wrapped.no_sync():
                yield
        else:
            yield

    def at(self, doing: str) -> None:
        """Say what the loop is at, for the message of a collective that fails there."""
        self.doing = doing

    def merge(self, control: TrainerControl) -> None:
        """Raise on every rank each flag raised on any rank: one small all-reduce of a CPU tensor,
        on a gloo group, so it never waits for a device."""
        if not self.enabled:
            return
        flags = torch.tensor([getattr(control, name) for name in FLAGS], dtype=torch.uint8)
        with self._collective("agreeing on the control flags"):
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._flag_group)
        for name, value in zip(FLAGS, flags.tolist(), strict=True):
            setattr(control, name, bool(value))

    def any_rank(self, value: bool) -> bool:
        """Whether ``value`` holds on at least one rank (``value`` alone)."""
        if not self.enabled:
            return value
        flag = torch.tensor([value], dtype=torch.uint8)
        with self._collective("agreeing on a yes/no decision"):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._flag_group)
        return bool(flag.item())

    def from_rank_zero(self, value: float) -> float:
        """Rank zero's ``value`` on every rank (``value`` alone)."""
        if not self.enabled:
            return value
        number = torch.tensor([value], dtype=torch.float64)
        with self._collective("taking rank 0's value of the tracked metric"):
            dist.broadcast(number, src=0, group=self._flag_group)
        return float(number.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (a host sync: call it at logging steps only)."""
        if not self.enabled:
            return value
        total = value.detach().clone().to(self._comm_device())
        with self._collective("averaging the logged loss"):
            dist.all_reduce(total)
        return total / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over ranks, on this rank's device (``value`` alone)."""
        if not self.enabled:
            return value
        total = value.detach().clone().to(self._comm_device())
        with self._collective("summing a count over ranks"):
            dist.all_reduce(total)
        return total.to(value.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        with self._collective("gathering a value from every rank"):
            dist.all_gather_object(gathered, obj, group=self._flag_group)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank (after a checkpoint, before reading it back)."""
        if self.enabled:
            with self._collective("waiting for every rank"):
                dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """The one place a backend's failure becomes a ``DistributedError`` saying where."""
        try:
            yield
        except RuntimeError as exc:  # gloo's and NCCL's errors (DistBackendError is one)
            raise DistributedError(
                f"rank {self.rank} of {self.world_size} failed {what} (the loop was at "
                f"{self.doing}): another rank has most likely died, raised or taken another "
                f"path, and its own output names the cause; backend error: {_first_line(exc)}"
            ) from exc


_cpu_group: list[Any] = [None, None]
"""``[default group, its gloo twin]``, made once per process group."""


def cpu_group(timeout: timedelta | None = None) -> Any:
    """The group for small CPU-side collectives (control flags, Python objects): ``None`` (the
    default group) under gloo, else one gloo twin of it, made on first use (a collective: every
    rank reaches it at the same point) and shared by every caller.

    Under NCCL a CPU tensor cannot travel at all, and an object collective would stage its bytes
    on whatever CUDA device is current, the same one on every rank unless the script chose one.
    """
    world = dist.group.WORLD
    if dist.get_backend() == "gloo":
        return None
    if _cpu_group[0] is not world:
        _cpu_group[:] = [world, dist.new_group(backend="gloo", timeout=timeout)]
    return _cpu_group[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
