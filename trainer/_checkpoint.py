"""Checkpoints: written whole or not at all, read back without unpickling arbitrary objects.

Layout of ``<output_dir>/checkpoint-<step>/``, file for file the one transformers writes, so
either ``Trainer`` resumes from the other's checkpoints and ``from_pretrained`` reads both::

    config.json          the model's configuration      (models with save_pretrained)
    model.safetensors    weights                        (see trainbus.trainer._pretrained)
    tokenizer files      the processing_class, if any   (its own save_pretrained)
    optimizer.pt         optimizer state                (both in transformers' parameter
    scheduler.pt         scheduler state                groups: trainbus.trainer._param_groups)
    rng_state.pth        Python, NumPy, torch CPU and CUDA generator states
                         (rng_state_<rank>.pth, one per rank, when distributed: every
                         rank's file in every copy, so that with save_on_each_node each
                         node's copy resumes all of its ranks)
    trainer_state.json   TrainerState, callback states included
    training_args.json   the arguments, secrets removed

``save_only_model`` leaves out the optimizer, scheduler and RNG files, as transformers does.

One deliberate difference: transformers also writes ``training_args.bin``, a pickle of its
``TrainingArguments`` object. Reading such a file means unpickling whatever class it names
(``weights_only=False``), nothing in a resume reads it (transformers' own resume does not), and
the arguments are worth keeping in a form anyone can read: we write them as JSON only.

Everything is written into a hidden sibling directory, flushed to disk, and renamed into place,
so a crash leaves either the previous set of checkpoints or the new one, never half a checkpoint
that a resume would pick up. A process killed mid-save leaves its hidden directories behind;
``recover_interrupted_saves`` (run at the start of ``train()``) deletes the half-written ones and
puts back a checkpoint that was moved aside but never replaced. Every ``.pt``/``.pth`` file is
read with ``weights_only=True``; the RNG file's NumPy array with torch's allow-list for it
(``trainbus.trainer._rng``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import safetensors.torch
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer._param_groups import export_states, import_states
from trainbus.trainer._pretrained import WEIGHTS_NAME, write_model, write_processing_class

__all__ = [
    "ARGS_NAME",
    "FINAL_MODEL_DIR",
    "OPTIMIZER_NAME",
    "PREFIX",
    "PUSH_PREFIX",
    "RNG_NAME",
    "SCHEDULER_NAME",
    "STATE_NAME",
    "WEIGHTS_NAME",
    "checkpoint_dir",
    "find_checkpoint",
    "load_optimizer_and_scheduler",
    "load_weights",
    "recover_interrupted_saves",
    "rng_file",
    "rotate_checkpoints",
    "save_model",
    "sorted_checkpoints",
    "write_checkpoint",
    "write_directory",
]

PREFIX: Final = "checkpoint"
OPTIMIZER_NAME: Final = "optimizer.pt"
SCHEDULER_NAME: Final = "scheduler.pt"
RNG_NAME: Final = "rng_state.pth"
STATE_NAME: Final = "trainer_state.json"
ARGS_NAME: Final = "training_args.json"
FINAL_MODEL_DIR: Final = "final_model"
"""``<output_dir>/final_model``: the model written at the end of training for the sinks that
upload it (``trainbus.trainer._final_model``), replaced at each ``train()``."""
PUSH_PREFIX: Final = "push"
"""``.push-<step>.tmp-<pid>``: a push's snapshot of a checkpoint (``trainbus.trainer._push``)."""
_STEP = re.compile(rf"^{PREFIX}-(\d+)$")
_STAGING = re.compile(rf"^\.({PREFIX}-\d+|{FINAL_MODEL_DIR}|{PUSH_PREFIX}-\w+)\.(tmp|old)-\d+$")


def checkpoint_dir(output_dir: str | os.PathLike[str], global_step: int) -> Path:
    """Where the checkpoint of ``global_step`` lives."""
    return Path(output_dir) / f"{PREFIX}-{global_step}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_file(rank: int, world_size: int) -> str:
    """The RNG file of ``rank``: ``rng_state.pth`` alone, ``rng_state_<rank>.pth`` in a group."""
    return RNG_NAME if world_size <= 1 else f"rng_state_{rank}.pth"


def _write_args(directory: Path, args_dict: dict[str, Any]) -> None:
    (directory / ARGS_NAME).write_text(
        json.dumps(args_dict, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )


def _write_files(
    staging: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    write_state: Callable[[Path], None],
    args_dict: dict[str, Any],
    rng_states: list[dict[str, Any]],
    processing: tuple[Any, Any],
) -> None:
    write_model(staging, model)
    write_processing_class(staging, *processing)
    if optimizer is not None:
        optimizer_state, scheduler_state = export_states(model, optimizer, scheduler)
        torch.save(optimizer_state, staging / OPTIMIZER_NAME)
        if scheduler_state is not None:
            torch.save(scheduler_state, staging / SCHEDULER_NAME)
    for rank, rng_state in enumerate(rng_states):
        torch.save(rng_state, staging / rng_file(rank, len(rng_states)))
    _write_args(staging, args_dict)
    write_state(staging)


def write_checkpoint(
    output_dir: str | os.PathLike[str],
    global_step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    write_state: Callable[[Path], None],
    args_dict: dict[str, Any],
    rng_states: list[dict[str, Any]],
    processing_class: Any = None,
    data_collator: Any = None,
) -> Path:
    """Write a complete checkpoint and rename it into place; returns its final directory.

    ``write_state`` writes ``trainer_state.json`` into the directory it is given; it runs last, so
    the state may refer to this checkpoint as the best one. ``optimizer`` and ``scheduler`` are
    skipped when ``None``, and ``rng_states`` is empty, with ``save_only_model``; otherwise it
    holds one entry per rank. ``processing_class`` (else ``data_collator``'s tokenizer) is saved
    beside the model.
    """
    return write_directory(
        checkpoint_dir(output_dir, global_step),
        lambda staging: _write_files(
            staging,
            model,
            optimizer,
            scheduler,
            write_state,
            args_dict,
            rng_states,
            (processing_class, data_collator),
        ),
    )


def write_directory(final: Path, fill: Callable[[Path], None]) -> Path:
    """Have ``fill`` write a hidden sibling of ``final``, flush it, and rename it into place.

    A directory already at ``final`` (the same step saved twice, or the last run's final model)
    is replaced: the newer one wins, as in HF. The old one moves aside first, so a crash in
    between never leaves ``final`` missing, and ``recover_interrupted_saves`` puts it back.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        fill(staging)
        for child in staging.rglob("*"):
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = None
    if final.exists():
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(retired, ignore_errors=True)
        final.rename(retired)
    staging.rename(final)
    _fsync_dir(final.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return final


def recover_interrupted_saves(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Clean up after saves a killed process left unfinished; returns the directories removed.

    A staging directory (``.checkpoint-<step>.tmp-<pid>``, ``.final_model.tmp-<pid>``, a push's
    snapshot ``.push-<step>.tmp-<pid>``) is half a checkpoint or a push never placed: removed.
    A retired one (``.checkpoint-<step>.old-<pid>``) is a complete one moved aside for a newer
    save of the same name: renamed back when that save never landed, removed otherwise.
    Call it before any rank of this job can save: it takes every such directory for a dead
    process's (``output_dir`` belongs to one training at a time).
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for child in sorted(root.iterdir()):
        match = _STAGING.match(child.name)
        if match is None or not child.is_dir():
            continue
        final = root / match.group(1)
        if match.group(2) == "old" and not final.exists():
            child.rename(final)
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def sorted_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_checkpoint(output_dir: str | os.PathLike[str], wanted: bool | str) -> Path:
    """``True`` -> the newest checkpoint of ``output_dir``; a string -> that directory, checked."""
    if wanted is True:
        found = sorted_checkpoints(output_dir)
        if not found:
            raise ConfigurationError(
                f"resume_from_checkpoint=True but output_dir {str(output_dir)!r} holds no "
                f"{PREFIX}-<step> directory to resume from"
            )
        return found[-1]
    path = Path(str(wanted))
    if not (path / STATE_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise ConfigurationError(
            f"resume_from_checkpoint={str(wanted)!r} is not a checkpoint directory: expected "
            f"{STATE_NAME} and {WEIGHTS_NAME} inside it"
        )
    return path


def rotate_checkpoints(
    output_dir: str | os.PathLike[str],
    limit: int | None,
    best: str | None,
    *,
    keep_only_best: bool = False,
) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``, never the best one; returns the deleted.

    With a best checkpoint that is not the newest, the best takes one of the ``limit`` places
    and at least the newest checkpoint is kept too (so ``limit=1`` keeps two, as in HF).
    ``keep_only_best`` deletes everything but the best (the end of a ``limit=1`` run).
    """
    found = sorted_checkpoints(output_dir)
    best_path = Path(best).resolve() if best else None
    others = [path for path in found if path.resolve() != best_path]
    if keep_only_best:
        doomed = others if best_path is not None and len(others) < len(found) else []
    elif limit is None or limit <= 0:
        doomed = []
    else:
        has_best = len(others) < len(found)
        keep_others = limit - 1 if has_best else limit
        if keep_others == 0 and has_best and found[-1].resolve() != best_path:
            keep_others = 1  # limit 1 and an older best: keep the newest too, as HF does
        doomed = others[: max(len(others) - keep_others, 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def save_model(
    directory: Path,
    model: nn.Module,
    args_dict: dict[str, Any],
    processing_class: Any,
    data_collator: Any = None,
) -> None:
    """The model as ``from_pretrained`` reads it, its processing class and the arguments."""
    directory.mkdir(parents=True, exist_ok=True)
    write_model(directory, model)
    write_processing_class(directory, processing_class, data_collator)
    _write_args(directory, args_dict)


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` into ``model`` in place (strict: every key must match)."""
    safetensors.torch.load_model(model, str(directory / WEIGHTS_NAME), strict=True)


def load_optimizer_and_scheduler(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
) -> None:
    """Restore optimizer and scheduler states, written by us or by transformers, if present."""
    if not (directory / OPTIMIZER_NAME).is_file():
        return
    saved_optimizer = torch.load(directory / OPTIMIZER_NAME, map_location=device, weights_only=True)
    saved_scheduler = None
    if (directory / SCHEDULER_NAME).is_file():
        saved_scheduler = torch.load(directory / SCHEDULER_NAME, weights_only=True)
    import_states(
        model,
        optimizer,
        scheduler,
        saved_optimizer,
        saved_scheduler,
        file_name=str(directory / OPTIMIZER_NAME),
    )
