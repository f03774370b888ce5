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

from trainbus.bus._errors import ConfigurationError

__all__ = ["world_rank", "world_size"]


def _from_group(getter: str) -> int | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return int(getattr(dist, getter)())


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"Environment variable {name} must be an integer, got {raw!r}."
        ) from None


def world_rank() -> int:
    """This process's rank in the job: the process group's, else ``$RANK``, else 0."""
    rank = _from_group("get_rank")
    return _env_int("RANK", 0) if rank is None else rank


def world_size() -> int:
    """How many processes the job has: the process group's, else ``$WORLD_SIZE``, else 1."""
    size = _from_group("get_world_size")
    return _env_int("WORLD_SIZE", 1) if size is None else size
