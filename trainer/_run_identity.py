"""One run id per job: world rank zero's choice, sent to every rank over the process group.

Every rank of a ``torchrun`` job opens the run directory of the same run (``<run_id>-rank<k>``),
so the ranks must name it alike, and two jobs must never share a name. torchrun's rendezvous id
does neither: without ``--rdzv-id`` it is the word ``none`` on every job, and a reused
``--rdzv-id`` names two separate jobs alike. So each rank proposes an id, and world rank zero's
proposal is broadcast (``broadcast_object_list``, once per run, before the run opens). A fresh
proposal differs per launch; one given on purpose (``TRAINBUS_RUN_ID``, an orchestrator's
``run_id``) is the same on every rank and continues that run.

torch.distributed lives here, in the trainer's layer; the orchestrator only takes the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["agree_run_id", "agree_run_id_for"]


def agree_run_id(proposal: str, *, device: torch.device | None = None) -> str | None:
    """World rank zero's ``proposal`` on every rank of the initialised process group.

    Args:
        proposal: this rank's candidate; only rank zero's is used.
        device: where the collective's buffers live (the rank's CUDA device under NCCL; ``None``
            lets torch pick, which is right for gloo).

    Returns:
        Rank zero's proposal; ``proposal`` itself in a group of one; ``None`` when no process
        group is initialised (nothing to agree over: the caller decides what that means).
    """
    if not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size() == 1:
        return proposal
    box: list[object] = [proposal if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device)
    chosen = box[0]
    if not isinstance(chosen, str):  # only a rank-zero bug could send anything else
        raise RuntimeError(f"world rank zero sent the run id {chosen!r}; expected a string")
    return chosen


def agree_run_id_for(trainer: Trainer, proposal: str) -> str:
    """The job's run id for ``trainer``'s run: its process group joined first (``torchrun``
    described it in the environment), then rank zero's ``proposal`` sent to every rank.

    A single process, or a trainer whose arguments say one process, keeps ``proposal``. Every
    rank must call this at the same point (the launcher does, before each new run opens).
    """
    distributed = trainer._dist
    if not distributed.enabled:
        return proposal
    distributed.setup()
    device = distributed.device if distributed.device.type == "cuda" else None
    chosen = agree_run_id(proposal, device=device)
    return proposal if chosen is None else chosen
