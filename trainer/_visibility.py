"""Checkpoints every rank must read, agreed on before any rank acts on them.

Resuming (``resume_from_checkpoint``) and ``load_best_model_at_end`` read a checkpoint directory
on every rank. The ranks of one node see the same disk; across nodes it depends on the storage.
Shared storage shows every node what world rank zero wrote. Per-node disks show a node only what
was written there: with ``save_on_each_node=True`` a whole copy of every checkpoint (the node's
local rank zero writes it, the RNG states of every rank included), otherwise nothing.

A rank that decides alone on what it sees breaks the job: one that raises leaves the others in
their next collective until the process group's timeout (forming the group, if it raised before
that), and one that skips loading the best model ends with other weights than the rest. So each
rank describes what it sees, the descriptions are gathered (a small collective, on the CPU), and
every rank derives the same verdict from the same list: all go on with the same checkpoint, or
all raise the same one-line `ConfigurationError` naming the checkpoint, the ranks (node and host)
that cannot read it, and the fix. The verdicts are pure functions (:func:`choose_checkpoint`,
:func:`check_sights`) of the gathered lists.

The collectives, taken in the same order on every rank whatever any rank sees:

* ``train()``, before its run opens (:func:`agree_on_resume`): what each rank was asked to resume
  from and its newest checkpoint are gathered, and rank zero's newest is the job's "latest"; then,
  unless no rank resumes, whether each rank can read the chosen checkpoint.
* the end of training under ``load_best_model_at_end`` (:func:`agree_on_best`): each rank's best
  checkpoint is gathered, rank zero's is the job's; then, unless rank zero has none it can read
  (every rank then keeps its weights, as transformers does with a warning), whether each rank can
  read it.

Alone (one process) nothing is gathered and these functions are not called.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
import torch.distributed as dist

from trainbus.bus._env import env_int
from trainbus.bus._errors import ConfigurationError, StateFileError
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._distributed import Distributed, cpu_group
from trainbus.trainer._state import TrainerState

__all__ = [
    "DIRECTORY",
    "LATEST",
    "Place",
    "Request",
    "Sight",
    "agree_on_best",
    "agree_on_resume",
    "check_sights",
    "choose_checkpoint",
    "look_at",
]

logger = structlog.get_logger(__name__)

LATEST: Final = "latest"
"""``Request.wanted`` for ``resume_from_checkpoint=True``: the newest checkpoint."""
DIRECTORY: Final = "<directory>"
"""``Sight.missing`` when the checkpoint directory itself is not there."""
_FIX: Final = (
    "give every node the same output_dir on shared storage, or train with "
    "save_on_each_node=True so that each node writes its own copy of every checkpoint"
)
_RESUME_ONLY_MODEL: Final = (
    "so the run would not continue the one that wrote it; pass resume_only_model=True to load "
    "the weights and trainer_state.json only (optimizer and schedule start afresh)"
)

T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """Where a rank runs, for error messages: its world rank, node rank and host name."""

    rank: int
    node: int
    host: str

    def __str__(self) -> str:
        return f"rank {self.rank} (node {self.node}, host {self.host})"

    @classmethod
    def here(cls, rank: int) -> Place:
        """This process: ``rank``, torchrun's node rank (``GROUP_RANK``), the host name."""
        return cls(rank, env_int(os.environ, "GROUP_RANK") or 0, socket.gethostname())


@dataclass(frozen=True)
class Request:
    """What one rank was asked to resume from, and the newest checkpoint it sees.

    ``wanted`` is ``None`` (no resume), `LATEST`, or the name of the checkpoint directory given
    (only the name is compared: per-node storage may mount the same checkpoint at other paths).
    ``newest`` is the newest ``checkpoint-<step>`` of this rank's ``output_dir``, or ``None``.
    """

    place: Place
    wanted: str | None
    newest: str | None


@dataclass(frozen=True)
class Sight:
    """What one rank sees of the agreed checkpoint.

    ``missing`` names the files it lacks (`DIRECTORY` alone when the directory is not there);
    ``fault`` is why its ``trainer_state.json`` cannot be read, if it cannot.
    """

    place: Place
    path: str
    missing: tuple[str, ...] = ()
    fault: str | None = None


def choose_checkpoint(requests: Sequence[Request]) -> str | None:
    """The checkpoint the job resumes from (a name, `LATEST` resolved to rank zero's newest).

    Raises:
        ConfigurationError: the ranks were asked different things, or rank zero has no
            checkpoint for ``resume_from_checkpoint=True``.
    """
    first = requests[0]
    odd = [r for r in requests if r.wanted != first.wanted]
    if odd:
        asked = "; ".join(f"{r.place} asks {r.wanted!r}" for r in [first, *odd])
        raise ConfigurationError(
            f"resume_from_checkpoint differs between ranks ({asked}): pass the same value on "
            "every rank"
        )
    if first.wanted != LATEST:
        return first.wanted
    if first.newest is None:
        raise ConfigurationError(
            f"resume_from_checkpoint=True but {first.place} finds no {ckpt.PREFIX}-<step> "
            "directory in output_dir to resume from"
        )
    return first.newest


def check_sights(field: str, name: str, sights: Sequence[Sight], *, resuming: bool) -> None:
    """Raise, on every rank alike, unless every rank can read checkpoint ``name`` whole.

    Args:
        field: the argument that asked for the checkpoint, first word of the message.
        name: the checkpoint's directory name.
        sights: every rank's `Sight`, in rank order.
        resuming: whether optimizer, scheduler and RNG files are needed (a resume that does not
            pass ``resume_only_model``), which ``resume_only_model=True`` lets go.
    """
    blind = [s for s in sights if DIRECTORY in s.missing]
    if blind:
        seen = next((s for s in sights if not s.missing), None)
        where = f" ({seen.place} reads it at {seen.path})" if seen is not None else ""
        raise ConfigurationError(
            f"{field}: checkpoint {name} is not visible on {_places(blind)}{where}; {_FIX}"
        )
    core = (ckpt.STATE_NAME, ckpt.WEIGHTS_NAME)
    broken = [s for s in sights if any(f in core for f in s.missing)]
    if broken:
        raise ConfigurationError(
            f"{field}: {name} is not a checkpoint directory everywhere ({_lacks(broken)}): "
            f"expected {' and '.join(core)} inside it; {_FIX}"
        )
    partial = [s for s in sights if s.missing]
    if partial:
        follow = _RESUME_ONLY_MODEL if resuming else _FIX
        raise ConfigurationError(f"{field}: {name} is incomplete ({_lacks(partial)}), {follow}")
    faulty = [s for s in sights if s.fault]
    if faulty:
        reasons = "; ".join(f"on {s.place}, {s.fault}" for s in faulty)
        raise StateFileError(f"{field}: {name} cannot be read {reasons}")


def _places(sights: Sequence[Sight]) -> str:
    return ", ".join(str(s.place) for s in sights)


def _lacks(sights: Sequence[Sight]) -> str:
    return "; ".join(f"{s.place} lacks {' and '.join(s.missing)}" for s in sights)


def look_at(path: Path, place: Place, needed: Sequence[str], *, read_state: bool = True) -> Sight:
    """This rank's `Sight` of the checkpoint at ``path``: the ``needed`` files it lacks, and
    whether its ``trainer_state.json`` reads (``read_state``)."""
    if not path.is_dir():
        return Sight(place, str(path), (DIRECTORY,))
    missing = tuple(name for name in needed if not (path / name).is_file())
    fault = None
    if read_state and ckpt.STATE_NAME not in missing:
        try:
            TrainerState.load_from_json(path / ckpt.STATE_NAME)
        except StateFileError as exc:
            fault = str(exc)
        except OSError as exc:  # unreadable here: a fault to gather, never a rank raising alone
            fault = f"{path / ckpt.STATE_NAME} cannot be read: {exc}."
    return Sight(place, str(path), missing, fault)


def _needed(args: TrainingArguments) -> tuple[str, ...]:
    """What this rank reads to resume: state and weights, and unless ``resume_only_model`` the
    optimizer, scheduler and its own RNG file."""
    core = (ckpt.STATE_NAME, ckpt.WEIGHTS_NAME)
    if args.resume_only_model:
        return core
    rng = ckpt.rng_file(args.process_index, args.world_size)
    return (*core, ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, rng)


def agree_on_resume(args: TrainingArguments, wanted: bool | str | None) -> Path | None:
    """The checkpoint every rank resumes from, on this rank's storage; ``None``: no resume.

    Joins the process group first if need be, so a rank that finds nothing never leaves the
    others waiting to form it. Call it on every rank of a group (``world_size > 1``).

    Raises:
        ConfigurationError: on every rank, when the ranks were asked different things or any
            rank cannot read the checkpoint (see `check_sights`).
    """
    Distributed(args.world_size, args.process_index, args.device).setup()
    place = Place.here(args.process_index)
    asked = None if not wanted else LATEST if wanted is True else Path(str(wanted)).name
    newest = None
    if wanted is True:
        found = ckpt.sorted_checkpoints(args.output_dir)
        newest = found[-1].name if found else None
    name = choose_checkpoint(_gather(Request(place, asked, newest)))
    if name is None:
        return None
    path = Path(args.output_dir) / name if wanted is True else Path(str(wanted))
    check_sights(
        "resume_from_checkpoint",
        name,
        _gather(look_at(path, place, _needed(args))),
        resuming=not args.resume_only_model,
    )
    return path


def agree_on_best(args: TrainingArguments, state: TrainerState) -> Path | None:
    """The best checkpoint every rank loads at the end of training, or ``None`` on every rank.

    Rank zero's ``state.best_model_checkpoint`` is the job's; each rank looks for it under its own
    copy (its own best path when the names match, rank zero's path otherwise). When rank zero
    has none it can read, no rank loads anything (one warning), so the weights stay equal.

    Raises:
        ConfigurationError: on every rank, when rank zero reads its best checkpoint and another
            rank cannot.
    """
    place = Place.here(args.process_index)
    own = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    needed = (ckpt.WEIGHTS_NAME,)
    mine = None if own is None else look_at(own, place, needed, read_state=False)
    first = _gather(mine)[0]
    if first is None:
        return None
    if first.missing:
        logger.warning(
            "best checkpoint not found on rank 0; every rank keeps its last weights",
            checkpoint=first.path,
            missing=list(first.missing),
        )
        return None
    name = Path(first.path).name
    path = own if own is not None and own.name == name else Path(first.path)
    sight = look_at(path, place, needed, read_state=False)
    check_sights("load_best_model_at_end", name, _gather(sight), resuming=False)
    return path


def _gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=cpu_group())
    return gathered
