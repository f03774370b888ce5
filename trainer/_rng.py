"""Seeding, and the RNG file of a checkpoint in the format transformers writes and reads.

``rng_state.pth`` (``rng_state_<rank>.pth`` in a group) holds one dict: ``"python"`` (the tuple
``random.getstate()`` returns), ``"numpy"`` (the tuple ``np.random.get_state()`` returns, whose key
is an ``ndarray``), ``"cpu"`` (a byte tensor) and, with CUDA, ``"cuda"`` (one tensor alone, a list
of them in a group). transformers restores each entry with the matching ``set_state`` call, so the
file must hold exactly these shapes for a checkpoint of ours to resume there.

The ``ndarray`` is the one thing ``torch.load(weights_only=True)`` refuses by default. It is read
with the four NumPy names torch's documentation allow-lists for this purpose
(``_reconstruct``, ``ndarray``, ``dtype`` and the ``uint32`` dtype class), which rebuild an array
from its bytes and run no code named by the file. A file that needs any other name is not
unpickled: its generators are left as they are, with one warning naming what it asked for.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog
import torch

__all__ = [
    "capture_rng_state",
    "enable_full_determinism",
    "read_rng_state",
    "restore_rng_state",
    "seed_run",
    "set_seed",
]

logger = structlog.get_logger(__name__)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device too) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def enable_full_determinism(seed: int) -> None:
    """``set_seed``, then deterministic kernels only, as transformers' ``full_determinism`` asks.

    torch then raises on any operation without a deterministic implementation instead of
    running a nondeterministic one. cuBLAS needs its workspace configured before its first
    use, and cuDNN its own switches; the same environment variables as transformers are set, so
    kernels started afterwards (and child processes) see them.
    """
    set_seed(seed)
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_run(seed: int, *, full_determinism: bool) -> None:
    """Seed a run as transformers does: ``enable_full_determinism`` or ``set_seed``."""
    if full_determinism:
        enable_full_determinism(seed)
    else:
        set_seed(seed)


def capture_rng_state(*, distributed: bool = False) -> dict[str, Any]:
    """Every generator a training step may draw from, as transformers saves them.

    ``distributed`` (one process of a group) stores the CUDA states of all visible devices as a
    list, as transformers does under ``torchrun``; a single process stores its current device's.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        cuda = torch.cuda.random
        state["cuda"] = cuda.get_rng_state_all() if distributed else cuda.get_rng_state()
    return state


def _numpy_globals() -> list[Any]:
    """The names a pickled NumPy array needs, under NumPy 2's module and NumPy 1's."""
    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]  # numpy's private name
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # files written under NumPy 1
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


_ALLOWED_NAMES: Final = frozenset(
    {
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.UInt32DType",
    }
)


def read_rng_state(path: Path) -> dict[str, Any] | None:
    """The generator states saved at ``path``, or ``None`` (warned once) when unreadable.

    Unreadable means: the file needs a name outside the NumPy allow-list to unpickle (it is then
    not unpickled at all), or it does not hold the dict described in the module docstring.
    """
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    refused = sorted(unsafe - _ALLOWED_NAMES)
    if refused:
        _warn_not_restored(path, f"unpickling it would need {', '.join(refused)}")
        return None
    with torch.serialization.safe_globals(_numpy_globals()):
        state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or not {"python", "numpy", "cpu"} <= set(state):
        _warn_not_restored(path, "expected a dict with 'python', 'numpy' and 'cpu' states")
        return None
    return state


def restore_rng_state(path: Path) -> bool:
    """Restore the generators saved at ``path``; ``False`` when there is no file or it is unread.

    Accepts the file transformers writes and the one trainbus wrote before it matched that
    format (NumPy's key as an int64 tensor in a dict).
    """
    if not path.is_file():
        return False
    state = read_rng_state(path)
    if state is None:
        return False
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        _restore_cuda(state["cuda"])
    return True


def _numpy_state(saved: Any) -> Any:
    """NumPy's state tuple, from transformers' tuple or our earlier dict of tensors."""
    if not isinstance(saved, dict):
        return saved
    keys = saved["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])


def _restore_cuda(saved: torch.Tensor | list[torch.Tensor]) -> None:
    """One device's state (a single process wrote it) or every device's (a group member did)."""
    try:
        if isinstance(saved, torch.Tensor):
            torch.cuda.random.set_rng_state(saved)
        else:
            torch.cuda.random.set_rng_state_all(saved)
    except (RuntimeError, IndexError) as exc:  # fewer devices now than when it was saved
        logger.warning(
            "cuda_rng_state_not_restored",
            reason=str(exc),
            consequence="CUDA draws (dropout on the GPU) differ from the run that saved it",
        )


def _warn_not_restored(path: Path, reason: str) -> None:
    logger.warning(
        "rng_state_not_restored",
        path=str(path),
        reason=reason,
        consequence="the resumed run draws other random numbers than the one that saved it",
    )
