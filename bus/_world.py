"""Which rank this process is, and of how many: the one answer the trainer and orchestrator share.

An initialised ``torch.distributed`` process group answers first (under ``mp.spawn`` nothing sets
``RANK``, yet the group knows each process's rank); otherwise torchrun's ``RANK`` and
``WORLD_SIZE``; otherwise one process. The bus never imports torch, and need not: a process group
can only exist once ``torch.distributed`` has been imported, so asking ``sys.modules`` is enough.
``TrainingArguments.process_index`` / ``world_size`` and the ``Orchestrator`` both read these.
"""

from __future__ import annotations

import os
import sys

from trainbus.bus._env import env_int

__all__ = ["local_rank", "world_rank", "world_size"]


def _from_group(getter: str) -> int | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return int(getattr(dist, getter)())


def _env_int(name: str, default: int, minimum: int) -> int:
    value = env_int(os.environ, name, minimum=minimum)
    return default if value is None else value


def world_rank() -> int:
    """This process's rank in the job: the process group's, else ``$RANK``, else 0."""
    rank = _from_group("get_rank")
    # -1 is Hugging Face's "not distributed", which users copy into their environment.
    return max(_env_int("RANK", 0, minimum=-1), 0) if rank is None else rank


def world_size() -> int:
    """How many processes the job has: the process group's, else ``$WORLD_SIZE``, else 1."""
    size = _from_group("get_world_size")
    return _env_int("WORLD_SIZE", 1, minimum=1) if size is None else size


def local_rank() -> int:
    """This process's rank on its node: torchrun's ``$LOCAL_RANK`` (-1 reads as 0), else 0."""
    return max(_env_int("LOCAL_RANK", 0, minimum=-1), 0)
