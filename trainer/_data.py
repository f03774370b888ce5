"""Batches for the loop: the default collator and data loaders whose order a resume can replay.

The training order of epoch ``e`` is a permutation drawn from its own generator seeded with
``seed + e`` (as accelerate's seedable sampler orders Hugging Face's); it never touches the global
RNG. A resumed run therefore sees the same batches in the same order, and skipping the batches
already trained costs nothing (the sampler starts later in the permutation instead of loading and
dropping them). The loop reads a single-process loader's batches through ``iter_batches``: the
same batches, without the ``DataLoader`` iterator's per-batch machinery.

The loaders have no generator of their own, as Hugging Face's have none: every ``iter()`` draws
its workers' base seed from the global RNG, so the dropout noise of the steps that follow is the
one a transformers script gets. A resumed run restores the global RNG state after that draw
(``trainbus.trainer._loop``), so it still follows the uninterrupted run's curve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any, Final

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

__all__ = [
    "DataCollator",
    "EpochSampler",
    "default_data_collator",
    "eval_dataloader",
    "has_length",
    "iter_batches",
    "move_to_device",
    "train_dataloader",
]

DataCollator = Callable[[list[Any]], dict[str, Any]]

_PROFILE_NAME: Final = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
"""The range torch's single-process iterator records around each batch."""

try:  # where torch's DataLoader imports them from; deprecated, so they may go one day
    from torch.utils.data.datapipes.datapipe import IterDataPipe, MapDataPipe

    _DATA_PIPES: tuple[type, ...] = (IterDataPipe, MapDataPipe)
except ImportError:  # pragma: no cover -- a torch without data pipes
    _DATA_PIPES = ()


def default_data_collator(features: list[Any]) -> dict[str, Any]:
    """Stack a list of dict samples into one dict of tensors (numbers become tensors too)."""
    if not features:
        raise ValueError(
            "default_data_collator got an empty list of samples; expected at least one"
        )
    first = features[0]
    if not isinstance(first, Mapping):
        raise ValueError(
            "default_data_collator expects each sample to be a dict of tensors or numbers, got "
            f"{type(first).__name__}; pass data_collator= to the Trainer for other shapes"
        )
    batch: dict[str, Any] = {}
    for key, value in first.items():
        if value is None:
            continue
        values = [feature[key] for feature in features]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, bool | int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(value, float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def has_length(dataset: object) -> bool:
    """Whether ``len(dataset)`` works (iterable data sets usually have none)."""
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
        return False
    try:
        len(dataset)
    except TypeError:
        return False
    return True


class EpochSampler(Sampler[int]):
    """Shuffles with an order that depends only on ``seed + epoch``; can start mid-permutation.

    With several ranks, the permutation is padded (by repeating its start) to a multiple of
    ``world_size`` and rank ``r`` takes every ``world_size``-th index from position ``r``, so
    every rank gets as many samples and together they cover the whole data set.
    """

    def __init__(self, length: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch`` and begin ``start`` samples into this rank's part."""
        self.epoch = epoch
        self.start = start

    def _shard_length(self) -> int:
        return -(-self.length // self.world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator)
        if self.world_size > 1:
            padding = self._shard_length() * self.world_size - self.length
            order = torch.cat([order, order[:padding]])[self.rank :: self.world_size]
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return max(self._shard_length() - self.start, 0)


def train_dataloader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collator: DataCollator,
    seed: int,
    drop_last: bool,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """The training loader: shuffled by an ``EpochSampler`` when the data set has a length."""
    sampler = None
    if has_length(dataset):
        # has_length() checked len() works; Dataset itself declares no __len__.
        length = len(dataset)  # type: ignore[arg-type]
        sampler = EpochSampler(length, seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def eval_dataloader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collator: DataCollator,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """The evaluation loader: sequential, every sample kept."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def iter_batches(loader: DataLoader[Any]) -> Iterator[Any]:
    """The batches of ``loader``, in its order: the same ones ``iter(loader)`` yields.

    On a plain single-process loader over a map-style data set (auto-batching, no pinned memory,
    no timeout) the batches are read straight from its batch sampler: the sampler is started and
    the draw that every ``iter(loader)`` makes for its workers' base seed is made (from the
    loader's generator, or the global RNG) in torch's order, then each batch is the data set's
    ``__getitems__`` (or one ``__getitem__`` per index) passed to the loader's collate function,
    and a ``StopIteration`` from either ends the epoch, as in torch. What is skipped is the
    iterator's per-batch machinery; while the autograd profiler records, each batch still gets
    torch's ``enumerate(DataLoader)`` range. Any other loader (worker processes, pinning, an
    iterable data set or data pipe, no batching, a timeout, a ``DataLoader`` subclass) is
    iterated as usual. The returned iterator has no ``len()``, and after a data set or collate
    error it is exhausted (torch's would go on with the next batch).
    """
    batch_sampler = loader.batch_sampler
    if batch_sampler is None or not _reads_directly(loader):
        return iter(loader)
    indices = iter(batch_sampler)  # before the draw, as torch starts its sampler first
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return _direct_batches(loader.dataset, indices, loader.collate_fn)


def _reads_directly(loader: DataLoader[Any]) -> bool:
    return (
        type(loader) is DataLoader
        and loader.num_workers == 0
        and not loader.pin_memory
        and loader.timeout == 0
        and not isinstance(loader.dataset, (IterableDataset, *_DATA_PIPES))
    )


def _direct_batches(
    dataset: Any, batches: Iterator[list[int]], collate: Callable[[list[Any]], Any]
) -> Iterator[Any]:
    profiler = torch.autograd.profiler
    get_items = getattr(dataset, "__getitems__", None)

    def fetch(indices: list[int]) -> Any:
        return collate(get_items(indices) if get_items else [dataset[i] for i in indices])

    for indices in batches:
        try:
            if getattr(profiler, "_is_profiler_enabled", False):  # e.g. a schedule's RECORD
                with profiler.record_function(_PROFILE_NAME):
                    batch = fetch(indices)
            else:
                batch = fetch(indices)
        except StopIteration:  # torch's iterator ends the epoch quietly on one
            return
        yield batch


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``; other values pass through."""
    if type(batch) is dict:  # the usual batch, checked first: this runs once per micro-batch
        return {  # _to() inlined
            key: (value if value.device == device else value.to(device, non_blocking=True))
            if isinstance(value, torch.Tensor)
            else move_to_device(value, device)
            for key, value in batch.items()
        }
    if isinstance(batch, torch.Tensor):
        return _to(batch, device)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; one already there is returned as is, without a dispatcher call
    (``Tensor.to`` would return it too, at several times the cost, on every CPU step)."""
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=True)
