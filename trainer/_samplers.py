"""Training orders that depend only on ``seed + epoch``, and can start part-way through an epoch.

Every sampler here is an `EpochSampler`: the loop selects an epoch (and how far into this rank's
share to begin) with ``set_epoch``, and the order is drawn from a generator of its own seeded
with ``seed + epoch``, never from the global RNG. A resumed run therefore sees the same batches,
and skipping those already trained costs nothing. ``train_sampling_strategy`` picks the order:

- ``"random"``: ``randperm`` of the data set; Hugging Face's seedable sampler draws the same one.
- ``"sequential"``: the data set's own order.
- ``"group_by_length"``: Hugging Face's length grouping (random mega-batches, each sorted by
  length, the longest sample first) over that same permutation. Hugging Face draws the training
  permutation for it from the global RNG, so only its evaluation order (seeded once) is the same
  as ours; ours stays reproducible across resumes.

Evaluation is not shuffled; with several ranks, `EvaluationShard` splits its batches between them
(see there).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import torch
from torch.utils.data import Sampler

from trainbus.bus._errors import ConfigurationError

__all__ = [
    "EpochSampler",
    "EvaluationShard",
    "LengthGroupedSampler",
    "SequentialEpochSampler",
    "length_grouped_indices",
    "sample_lengths",
]

_MAX_MEGA_BATCHES: Final = 50


class EpochSampler(Sampler[int]):
    """Shuffles with an order that depends only on ``seed + epoch``; can start mid-permutation.

    With several ranks, the order is padded (by repeating its start) to a multiple of
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
        """Select the order of ``epoch`` and begin ``start`` samples into this rank's part."""
        self.epoch = epoch
        self.start = start

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """This epoch's order of the whole data set; ``generator`` is seeded ``seed + epoch``."""
        return torch.randperm(self.length, generator=generator)

    def _shard_length(self) -> int:
        return -(-self.length // self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self.order(torch.Generator().manual_seed(self.seed + self.epoch))
        if self.world_size > 1:
            padding = self._shard_length() * self.world_size - self.length
            order = torch.cat([order, order[:padding]])[self.rank :: self.world_size]
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return max(self._shard_length() - self.start, 0)


class SequentialEpochSampler(EpochSampler):
    """The data set's own order, every epoch (``train_sampling_strategy="sequential"``)."""

    def order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(self.length)


class LengthGroupedSampler(EpochSampler):
    """Batches of samples of similar length (``train_sampling_strategy="group_by_length"``).

    ``batch_size`` is the number of samples that make one optimizer update (per-device batch
    size times gradient accumulation), as in Hugging Face.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(lengths), seed, rank=rank, world_size=world_size)
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.tensor(
            length_grouped_indices(self.lengths, self.batch_size, generator), dtype=torch.long
        )


class EvaluationShard(Sampler[list[int]]):
    """One rank's batches of an evaluation set split across ``world_size`` ranks, batch by batch.

    The order (the data set's own, or a length-grouped one) is cut into batches exactly as one
    process would cut it, and batch ``b`` goes to rank ``b % world_size``, as accelerate's batch
    sampler shard deals them: joining the ranks' batches of each step in rank order gives back the
    single-process order, so a gathered evaluation equals a single-process one sample for sample.

    When the batches do not divide evenly, a rank whose turn has no batch left still runs a
    *filler* (the first batch again) and contributes none of its rows (``rows(step) == 0``): every
    rank runs the same number of forward passes, so a collective inside one (a token count summed
    over ranks) never waits for a rank that stopped early. At most one filler per rank; nothing a
    filler produced reaches the results.

    Parameters:
        order: every index of the data set, in evaluation order.
        batch_size: the per-device evaluation batch size.
        rank: this rank, in ``[0, world_size)``.
        world_size: the number of ranks.
        drop_last: drop the last batch when it is short, as one process would.
    """

    def __init__(
        self,
        order: Iterable[int],
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"eval_batch_size must be at least 1, got {batch_size}")
        indices = list(order)
        batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        self.batches = batches
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.steps = -(-len(batches) // world_size)
        """Batches every rank runs: the same number on each, fillers included."""

    def rows(self, step: int) -> int:
        """How many samples this rank's batch of ``step`` contributes (0 for a filler)."""
        index = step * self.world_size + self.rank
        return len(self.batches[index]) if index < len(self.batches) else 0

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.steps):
            index = step * self.world_size + self.rank
            yield self.batches[index] if index < len(self.batches) else self.batches[0]

    def __len__(self) -> int:
        return self.steps


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[int]:
    """A permutation whose consecutive ``batch_size`` slices hold samples of similar length.

    The same steps as Hugging Face's, so a seeded generator gives its order: a random permutation
    cut into mega-batches (``min(len // (4 * batch_size), 50)`` batches each, at least one), each
    sorted by decreasing length; the longest sample of all is then swapped to the very front, so
    that running out of memory happens on the first batch rather than hours in.
    """
    per_mega = min(len(lengths) // (batch_size * 4), _MAX_MEGA_BATCHES) or 1
    size = per_mega * batch_size
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megas = [
        sorted(indices[i : i + size], key=lambda j: lengths[j], reverse=True)
        for i in range(0, len(indices), size)
    ]
    longest = int(torch.argmax(torch.tensor([lengths[mega[0]] for mega in megas])).item())
    megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [index for mega in megas for index in mega]


def sample_lengths(dataset: Any, *, input_name: str, length_column: str) -> list[int]:
    """The length of every sample, for length grouping.

    A Hugging Face ``datasets.Dataset`` with a ``length_column`` gives them directly; otherwise
    every sample is read once and the length of its ``input_name`` entry taken, as in Hugging Face.
    """
    datasets = sys.modules.get("datasets")  # loaded already if the data set is one of its own
    named = datasets is not None and isinstance(dataset, datasets.Dataset)
    if named and length_column in dataset.column_names:
        return [int(length) for length in dataset[length_column]]
    first = dataset[0]
    if not isinstance(first, Mapping) or input_name not in first:
        got = f"keys {sorted(first)}" if isinstance(first, Mapping) else type(first).__name__
        raise ConfigurationError(
            "train_sampling_strategy 'group_by_length' needs samples that are dicts with an "
            f"{input_name!r} entry (or a {length_column!r} column, see length_column_name), got "
            f"{got}."
        )
    return [len(dataset[i][input_name]) for i in range(len(dataset))]
