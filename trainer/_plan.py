"""How long a run is, and where a resumed run picks up: numbers only, no torch objects.

With a data loader of known length, an epoch holds ``ceil(len / GA)`` updates (the last window
may be partial). A positive ``max_steps`` wins over ``num_train_epochs`` and may cut the last
epoch short; otherwise ``max_steps = ceil(num_train_epochs * updates_per_epoch)``. A data set
without a length needs ``max_steps``, and each of its "epochs" is ``max_steps`` updates long.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

from trainbus.bus._errors import ConfigurationError

__all__ = ["ResumePoint", "RunPlan", "plan_run", "resume_point"]


class RunPlan(NamedTuple):
    """The length of a run in updates, epochs and micro-batches."""

    max_steps: int
    num_train_epochs: int
    updates_per_epoch: int
    batches_per_epoch: int | None
    """Micro-batches in a full epoch; ``None`` for a data set without a length."""


class ResumePoint(NamedTuple):
    """Where training continues: the epoch index and the updates already done inside it."""

    epoch: int
    updates_done: int


def plan_run(
    *,
    batches_per_epoch: int | None,
    gradient_accumulation_steps: int,
    max_steps: int,
    num_train_epochs: float,
) -> RunPlan:
    """Resolve the run length from the arguments and the data loader's length."""
    if batches_per_epoch is None:
        if max_steps <= 0:
            raise ConfigurationError(
                "max_steps must be a positive number when train_dataset has no length "
                f"(an iterable data set); got max_steps={max_steps}"
            )
        return RunPlan(max_steps, sys.maxsize, max_steps, None)
    if batches_per_epoch == 0:
        raise ConfigurationError(
            "train_dataset yields no batch: it is empty, or smaller than "
            "per_device_train_batch_size with dataloader_drop_last=True"
        )
    updates_per_epoch = max(math.ceil(batches_per_epoch / gradient_accumulation_steps), 1)
    if max_steps > 0:
        epochs = math.ceil(max_steps / updates_per_epoch)
        return RunPlan(max_steps, epochs, updates_per_epoch, batches_per_epoch)
    total = math.ceil(num_train_epochs * updates_per_epoch)
    return RunPlan(total, math.ceil(num_train_epochs), updates_per_epoch, batches_per_epoch)


def resume_point(global_step: int, plan: RunPlan) -> ResumePoint:
    """The epoch and in-epoch update count a checkpoint taken at ``global_step`` stopped at."""
    return ResumePoint(global_step // plan.updates_per_epoch, global_step % plan.updates_per_epoch)
