"""Data loaders built from the ``dataloader_*`` arguments, and the loop's way of reading them.

The training order comes from an ``EpochSampler`` (``trainbus.trainer._samplers``): drawn from a
generator of its own seeded with ``seed + epoch``, it never touches the global RNG, so a resumed
run sees the same batches in the same order, and skipping the batches already trained costs
nothing. The loop reads a single-process loader's batches through ``iter_batches``: the same
batches, without the ``DataLoader`` iterator's per-batch machinery. Collators live in
``trainbus.trainer._collators``, the removal of unused columns in ``trainbus.trainer._columns``.

The loaders have no generator of their own, as Hugging Face's have none: every ``iter()`` draws
its workers' base seed from the global RNG, so the dropout noise of the steps that follow is the
one a transformers script gets. A resumed run restores the global RNG state after that draw
(``trainbus.trainer._loop``), so it still follows the uninterrupted run's curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Any, Final

import structlog
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from trainbus.trainer._collators import DataCollator
from trainbus.trainer._samplers import (
    EpochSampler,
    LengthGroupedSampler,
    SequentialEpochSampler,
    sample_lengths,
)

if TYPE_CHECKING:
    from trainbus.trainer._arguments import TrainingArguments

__all__ = [
    "EpochSampler",
    "LoaderOptions",
    "eval_dataloader",
    "eval_sampler",
    "has_length",
    "iter_batches",
    "move_to_device",
    "train_dataloader",
    "train_sampler",
]

logger = structlog.get_logger(__name__)

_PROFILE_NAME: Final = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
"""The range torch's single-process iterator records around each batch."""

try:  # where torch's DataLoader imports them from; deprecated, so they may go one day
    from torch.utils.data.datapipes.datapipe import IterDataPipe, MapDataPipe

    _DATA_PIPES: tuple[type, ...] = (IterDataPipe, MapDataPipe)
except ImportError:  # pragma: no cover -- a torch without data pipes
    _DATA_PIPES = ()


def has_length(dataset: object) -> bool:
    """Whether ``len(dataset)`` works (iterable data sets usually have none)."""
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
        return False
    try:
        len(dataset)
    except TypeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """The ``dataloader_*`` arguments, as every loader of a trainer passes them to torch.

    ``pin_memory`` pins only for a CUDA device: on a CPU there is nothing to pin for (torch would
    warn and ignore it), and an unpinned single-process loader keeps ``iter_batches``'s direct
    path. ``drop_last`` applies to map-style data sets only, as in Hugging Face.
    """

    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    multiprocessing_context: str | None = None
    in_order: bool = True
    drop_last: bool = False

    @classmethod
    def from_args(cls, args: TrainingArguments, device: torch.device) -> LoaderOptions:
        """The options ``args`` set, for loaders feeding ``device``."""
        return cls(
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and device.type == "cuda",
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            in_order=args.dataloader_in_order,
            drop_last=args.dataloader_drop_last,
        )

    def loader_kwargs(self, dataset: object) -> dict[str, Any]:
        """Keyword arguments for ``DataLoader`` over ``dataset``."""
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "prefetch_factor": self.prefetch_factor,
            "multiprocessing_context": self.multiprocessing_context,
        }
        if not self.in_order:  # torch >= 2.6 only; the default is left unsaid for older ones
            kwargs["in_order"] = False
        if not isinstance(dataset, IterableDataset):
            kwargs["drop_last"] = self.drop_last
        return kwargs


def train_dataloader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collator: DataCollator,
    seed: int,
    sampler: Sampler[int] | None = None,
    options: LoaderOptions = LoaderOptions(),
) -> DataLoader[Any]:
    """The training loader: in ``sampler``'s order, by default an ``EpochSampler`` of ``seed``
    when the data set has a length (an iterable data set keeps its own order)."""
    if sampler is None and has_length(dataset):
        # has_length() checked len() works; Dataset itself declares no __len__.
        sampler = EpochSampler(len(dataset), seed)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        **options.loader_kwargs(dataset),
    )


def eval_dataloader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collator: DataCollator,
    sampler: Sampler[int] | None = None,
    options: LoaderOptions = LoaderOptions(),
) -> DataLoader[Any]:
    """The evaluation loader: in the data set's order unless ``sampler`` says otherwise."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collator,
        **options.loader_kwargs(dataset),
    )


def train_sampler(
    dataset: object,
    *,
    strategy: str,
    seed: int,
    batch_size: int,
    input_name: str,
    length_column: str,
    rank: int = 0,
    world_size: int = 1,
) -> EpochSampler | None:
    """The training sampler ``train_sampling_strategy`` names; ``None`` for an iterable data
    set, which is read in its own order (length grouping then does not apply, as in Hugging
    Face, and a warning says so). ``batch_size`` is the samples of one optimizer update."""
    if not has_length(dataset):
        if strategy == "group_by_length":
            logger.warning("group_by_length needs a data set with a length; its order is kept")
        return None
    length = len(dataset)  # type: ignore[arg-type]  # has_length() checked it works
    if strategy == "sequential":
        return SequentialEpochSampler(length, seed, rank=rank, world_size=world_size)
    if strategy == "group_by_length":
        lengths = sample_lengths(dataset, input_name=input_name, length_column=length_column)
        return LengthGroupedSampler(lengths, batch_size, seed, rank=rank, world_size=world_size)
    return EpochSampler(length, seed, rank=rank, world_size=world_size)


def eval_sampler(
    dataset: object,
    *,
    strategy: str,
    seed: int,
    batch_size: int,
    input_name: str,
    length_column: str,
) -> Sampler[int] | None:
    """The evaluation order: the data set's own, or grouped by length (the same order at every
    evaluation, from ``seed``) when training groups by length, as in Hugging Face."""
    if strategy != "group_by_length" or not has_length(dataset):
        return None
    lengths = sample_lengths(dataset, input_name=input_name, length_column=length_column)
    return LengthGroupedSampler(lengths, batch_size, seed)


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
