"""Collecting per-batch predictions into arrays, padding where batches differ in length.

Evaluation batches of text rarely share a sequence length (each is padded to its own longest
row), so their logits, labels and inputs cannot simply be stacked. As in Hugging Face, two
arrays are joined along the first axis, and when their second axes differ, the shorter is padded
at the end with ``padding_index`` (-100, the label value every loss ignores). Outputs may nest
(tuples, lists, dicts of tensors); the structure is kept. `BatchStore` holds what one evaluation
collected: on the device until ``to_numpy()`` (every ``eval_accumulation_steps`` batches, or at
the end) moves it to NumPy, and as a list of batches when concatenation is off
(``eval_do_concat_batches=False``).

With several ranks, `gather_rows` joins what each rank computed for one evaluation step, in rank
order: first one small exchange of every rank's row count and shapes (so that ranks whose outputs
differ in structure fail with a message saying how, instead of waiting in a collective), then one
``all_gather`` per tensor, padded to the largest shape of any rank with ``padding_index``, as
accelerate's ``pad_across_processes`` pads. Only each rank's real rows are kept, so a filler
batch (see ``trainbus.trainer._samplers.EvaluationShard``) adds nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Final, cast

import numpy as np
import torch
import torch.distributed as dist

from trainbus.bus._errors import TrainbusError

__all__ = [
    "PADDING_INDEX",
    "BatchStore",
    "batch_size_of",
    "gather_rows",
    "nested_concat",
    "nested_detach",
    "nested_numpy",
    "nested_truncate",
]

PADDING_INDEX: Final = -100


def _pad_concat_tensors(first: torch.Tensor, second: torch.Tensor, pad: int) -> torch.Tensor:
    first, second = (
        first.reshape(-1) if first.dim() == 0 else first,
        second.reshape(-1) if second.dim() == 0 else second,
    )
    if first.dim() == 1 or first.shape[1] == second.shape[1]:
        return torch.cat((first, second), dim=0)
    shape = (len(first) + len(second), max(first.shape[1], second.shape[1]), *first.shape[2:])
    joined = first.new_full(shape, pad)
    joined[: len(first), : first.shape[1]] = first
    joined[len(first) :, : second.shape[1]] = second
    return joined


def _pad_concat_arrays(first: Any, second: Any, pad: int) -> np.ndarray[Any, Any]:
    first, second = np.atleast_1d(first), np.atleast_1d(second)
    if first.ndim == 1 or first.shape[1] == second.shape[1]:
        return np.concatenate((first, second), axis=0)
    shape = (len(first) + len(second), max(first.shape[1], second.shape[1]), *first.shape[2:])
    joined = np.full_like(first, pad, shape=shape)
    joined[: len(first), : first.shape[1]] = first
    joined[len(first) :, : second.shape[1]] = second
    return joined


def _like(mapping: Mapping[str, Any], items: dict[str, Any]) -> Any:
    """``items`` as a mapping of ``mapping``'s own type (a model output class, say)."""
    return cast(Any, type(mapping))(items)


def nested_concat(first: Any, second: Any, pad: int = PADDING_INDEX) -> Any:
    """``first`` and ``second`` (tensors, arrays, or the same nesting of them) joined on axis 0."""
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return _pad_concat_tensors(first, second, pad)
    if type(first) is not type(second):
        raise TypeError(
            "evaluation outputs changed structure between batches: "
            f"{type(first).__name__} then {type(second).__name__}"
        )
    if isinstance(first, list | tuple):
        return type(first)(nested_concat(a, b, pad) for a, b in zip(first, second, strict=False))
    if isinstance(first, Mapping):
        return _like(first, {key: nested_concat(a, second[key], pad) for key, a in first.items()})
    if isinstance(first, np.ndarray):
        return _pad_concat_arrays(first, second, pad)
    raise TypeError(f"cannot concatenate evaluation outputs of type {type(first).__name__}")


def nested_detach(value: Any) -> Any:
    """``value`` with every tensor detached; the nesting is kept."""
    if isinstance(value, list | tuple):
        return type(value)(nested_detach(item) for item in value)
    if isinstance(value, Mapping):
        return _like(value, {key: nested_detach(item) for key, item in value.items()})
    return value.detach() if isinstance(value, torch.Tensor) else value


def nested_numpy(value: Any) -> Any:
    """``value`` with every tensor as a NumPy array on the CPU (bfloat16 becomes float32)."""
    if isinstance(value, list | tuple):
        return type(value)(nested_numpy(item) for item in value)
    if isinstance(value, Mapping):
        return _like(value, {key: nested_numpy(item) for key, item in value.items()})
    tensor = value.cpu()
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def nested_truncate(value: Any, limit: int) -> Any:
    """The first ``limit`` rows of every tensor in ``value`` (``None`` entries stay ``None``)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return type(value)(nested_truncate(item, limit) for item in value)
    if isinstance(value, Mapping):
        return _like(value, {key: nested_truncate(item, limit) for key, item in value.items()})
    return value[:limit]


def batch_size_of(value: Any) -> int | None:
    """The first dimension of the first tensor (or array) found in ``value``, if any."""
    if isinstance(value, list | tuple):
        items: Any = value
    elif isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, torch.Tensor | np.ndarray):
        return int(value.shape[0]) if value.ndim >= 1 else None
    else:
        return None
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


class BatchStore:
    """What one evaluation collected of one kind (losses, predictions, labels or inputs)."""

    def __init__(self, concat: bool, pad: int = PADDING_INDEX) -> None:
        self.concat = concat
        self.pad = pad
        self._on_device: Any = None
        self._arrays: Any = None

    def add(self, value: Any) -> None:
        """Append one batch's ``value`` (tensors on the device); ``None`` adds nothing."""
        if value is None:
            return
        if self._on_device is None:
            self._on_device = value if self.concat else [value]
        elif self.concat:
            self._on_device = nested_concat(self._on_device, value, self.pad)
        else:
            self._on_device.append(value)

    def to_numpy(self) -> None:
        """Move what the device holds to NumPy, after what was moved before."""
        if self._on_device is None:
            return
        arrays = nested_numpy(self._on_device)
        self._on_device = None
        if self._arrays is None:
            self._arrays = arrays
        elif self.concat:
            self._arrays = nested_concat(self._arrays, arrays, self.pad)
        else:
            self._arrays.extend(arrays)

    def arrays(self) -> Any:
        """Everything collected, as NumPy (``None`` when nothing was added)."""
        self.to_numpy()
        return self._arrays


def _leaves(value: Any) -> list[torch.Tensor | None]:
    """The tensors of ``value`` in a fixed order (``None`` where a kind of result is absent)."""
    if value is None:
        return [None]
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, torch.Tensor):
        return [value.reshape(1) if value.dim() == 0 else value]
    raise TypeError(f"cannot gather evaluation outputs of type {type(value).__name__}")


def _rebuild(value: Any, leaves: Iterator[Any]) -> Any:
    """``value``'s nesting with its tensors replaced, in `_leaves` order, by ``leaves``."""
    if value is None:
        return next(leaves)
    if isinstance(value, list | tuple):
        return type(value)(_rebuild(item, leaves) for item in value)
    if isinstance(value, Mapping):
        return _like(value, {key: _rebuild(item, leaves) for key, item in value.items()})
    return next(leaves)


def _describe(leaves: list[torch.Tensor | None]) -> list[tuple[str, tuple[int, ...]] | None]:
    return [None if leaf is None else (str(leaf.dtype), tuple(leaf.shape)) for leaf in leaves]


def _check_alike(described: list[list[tuple[str, tuple[int, ...]] | None]]) -> None:
    """Raise when the ranks' outputs differ in anything but their sizes."""
    first = described[0]
    for rank, other in enumerate(described[1:], start=1):
        same = len(other) == len(first) and all(
            (a is None) == (b is None)
            and (a is None or b is None or (a[0] == b[0] and len(a[1]) == len(b[1])))
            for a, b in zip(first, other, strict=True)
        )
        if not same:
            raise TrainbusError(
                f"Evaluation outputs differ between ranks and cannot be gathered: rank 0 "
                f"returned {first}, rank {rank} returned {other} (dtype and shape of each "
                "tensor of the loss, predictions, labels and inputs)."
            )


def _padded(leaf: torch.Tensor, shape: tuple[int, ...], pad: int) -> torch.Tensor:
    if tuple(leaf.shape) == shape:
        return leaf.contiguous()
    out = leaf.new_full(shape, pad)
    out[tuple(slice(0, size) for size in leaf.shape)] = leaf
    return out


def gather_rows(
    value: Any, rows: int, world_size: int, device: torch.device, pad: int = PADDING_INDEX
) -> Any:
    """Every rank's first ``rows`` rows of each tensor in ``value``, joined in rank order.

    A collective: every rank of the default process group calls it at the same point, with
    ``value`` of the same nesting (``None`` entries included) and tensors of the same dtype and
    number of dimensions. Sizes may differ: each
    tensor is padded with ``pad`` to the largest of any rank before the exchange and cut to each
    rank's ``rows`` after it, so the result keeps the widest rank's trailing sizes.

    Parameters:
        value: this rank's results of one step: tensors, or tuples, lists, dicts and ``None``.
        rows: how many leading rows of each tensor are real (0 for a filler batch).
        world_size: the number of ranks.
        device: this rank's device: tensors are exchanged from it, and on a GPU it is made the
            current device for the exchange of shapes (which torch does from the current one).
        pad: the value that fills a tensor up to the largest shape.
    """
    leaves = _leaves(value)
    headers: list[Any] = [None] * world_size
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_gpu:
        dist.all_gather_object(headers, (rows, _describe(leaves)))
    _check_alike([header[1] for header in headers])
    counts = [int(header[0]) for header in headers]
    gathered: list[torch.Tensor | None] = []
    for position, leaf in enumerate(leaves):
        if leaf is None:
            gathered.append(None)
            continue
        shapes = [header[1][position][1] for header in headers]
        largest = tuple(max(sizes) for sizes in zip(*shapes, strict=True))
        padded = _padded(leaf.to(device), largest, pad)
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        gathered.append(
            torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
        )
    return _rebuild(value, iter(gathered))
