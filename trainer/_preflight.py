"""What ``train()`` refuses before its run opens, so bad input leaves nothing half-written.

The launcher creates the run directory, journal and tracker runs as soon as ``train()`` opens the
run; whatever can be known to fail from the arguments and the checkpoint on disk is checked here
first, each with one line naming the field or file:

* a run of zero optimizer updates (``num_train_epochs=0`` with ``max_steps=-1``), which would
  otherwise "complete" having trained nothing;
* a checkpoint to resume from that is missing its optimizer, scheduler or this rank's RNG file:
  resuming without them silently diverges from the run that wrote it, so it takes
  ``resume_only_model=True`` to accept that;
* a ``trainer_state.json`` that is truncated or corrupt;
* under ``torchrun``, a checkpoint that some rank cannot read (another node's disk) or ranks asked
  to resume from different checkpoints: checked on every rank together, so every rank refuses.
"""

from __future__ import annotations

from pathlib import Path

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._state import TrainerState
from trainbus.trainer._visibility import agree_on_resume

__all__ = ["check_before_training", "check_checkpoint_complete", "check_run_length"]


def check_before_training(
    args: TrainingArguments, resume_from_checkpoint: bool | str | None
) -> Path | None:
    """Raise a `ConfigurationError` for anything that would make this ``train()`` call fail.

    Args:
        args: the trainer's arguments.
        resume_from_checkpoint: ``train()``'s argument; ``None`` falls back to
            ``args.resume_from_checkpoint``, as the loop does.

    Returns:
        The checkpoint to resume from (``True`` resolved), or ``None``. In a group of processes
        every rank agrees on it, or every rank raises the same error
        (``trainbus.trainer._visibility``): no rank may refuse alone while the others go on.
    """
    check_run_length(args)
    wanted = (
        args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
    )
    if args.world_size > 1:
        return agree_on_resume(args, wanted)
    if not wanted:
        return None
    checkpoint = ckpt.find_checkpoint(args.output_dir, wanted)
    TrainerState.load_from_json(checkpoint / ckpt.STATE_NAME)  # a corrupt file is named now
    if not args.resume_only_model:
        check_checkpoint_complete(checkpoint, rank=args.process_index, world_size=args.world_size)
    return checkpoint


def check_run_length(args: TrainingArguments) -> None:
    """Refuse a run of zero updates; ``max_steps=0`` is already refused by the arguments."""
    if args.max_steps <= 0 and args.num_train_epochs == 0:
        raise ConfigurationError(
            "num_train_epochs=0 with max_steps=-1 trains for zero steps: set num_train_epochs "
            "> 0 or max_steps > 0 (to only evaluate, call evaluate() without train())."
        )


def check_checkpoint_complete(checkpoint: Path, *, rank: int, world_size: int) -> None:
    """Refuse a checkpoint without the optimizer, scheduler or RNG state a resume continues."""
    wanted = (ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.rng_file(rank, world_size))
    missing = [name for name in wanted if not (checkpoint / name).is_file()]
    if missing:
        raise ConfigurationError(
            f"resume_from_checkpoint: {checkpoint} has no {' or '.join(missing)}, so the run "
            "would not continue the one that wrote it; pass resume_only_model=True to load the "
            "weights and trainer_state.json only (optimizer and schedule start afresh)."
        )
