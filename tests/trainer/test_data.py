"""`iter_batches`: the loop's batches are exactly the ones ``iter(loader)`` would yield."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trainbus.trainer._data import iter_batches, train_dataloader


class Numbers(Dataset[dict[str, torch.Tensor]]):
    """Ten samples; ``x`` is the index, ``noise`` a draw from the global RNG at fetch time."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(index)]), "noise": torch.rand(1)}


class BatchFetched(Numbers):
    """A data set that fetches a whole batch at once, as Hugging Face ``datasets`` do."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(list(indices))
        return [{"x": torch.tensor([float(i)]), "noise": torch.zeros(1)} for i in indices]


class Stream(IterableDataset[dict[str, torch.Tensor]]):
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter({"x": torch.tensor([float(i)])} for i in range(5))


class CountingLoader(DataLoader[Any]):
    """A subclass may change iteration; it must be iterated through its own ``__iter__``."""

    iterations = 0

    def __iter__(self) -> Any:
        CountingLoader.iterations += 1
        return super().__iter__()


class EagerBatches:
    """A batch sampler that draws its whole order as soon as it is started (bucketing samplers
    do), from the global RNG: the order of that draw and the loader's base-seed draw matters."""

    def __iter__(self) -> Iterator[list[int]]:
        return iter(torch.randperm(10).view(-1, 2).tolist())

    def __len__(self) -> int:
        return 5


class StopsEarly(Numbers):
    """``StopIteration`` from ``__getitem__`` ends torch's epoch quietly."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index == 6:
            raise StopIteration
        return super().__getitem__(index)


def _both_ways(make_loader: Any) -> tuple[list[Any], list[Any], torch.Tensor, torch.Tensor]:
    """Batches and the global RNG state afterwards, through ``iter_batches`` and ``iter``;
    checks that ``iter_batches`` took its direct path (and not the loader's own iterator)."""
    torch.manual_seed(7)
    batches = iter_batches(make_loader())
    assert inspect.isgenerator(batches)
    direct = list(batches)
    after_direct = torch.get_rng_state()
    torch.manual_seed(7)
    usual = list(iter(make_loader()))
    after_usual = torch.get_rng_state()
    return direct, usual, after_direct, after_usual


def _assert_same_batches(first: list[Any], second: list[Any]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_loader_without_generator_gives_the_same_batches_and_rng_draws(
    drop_last: bool,
) -> None:
    """The shuffle and the base-seed draw both come from the global RNG here; the samples draw
    from it too, so any difference in what is drawn, or when, shows in the batches."""
    direct, usual, rng_direct, rng_usual = _both_ways(
        lambda: DataLoader(Numbers(), batch_size=3, shuffle=True, drop_last=drop_last)
    )
    _assert_same_batches(direct, usual)
    assert len(direct) == (3 if drop_last else 4)
    assert torch.equal(rng_direct, rng_usual)


def test_the_trainers_own_loader_draws_its_base_seed_from_the_global_rng() -> None:
    """As transformers' loader (no generator): one global draw per ``iter()``, both ways, and
    the shuffle still comes from the sampler's own seed."""

    def make() -> DataLoader[Any]:
        loader = train_dataloader(
            Numbers(), batch_size=4, collator=_stack, seed=3, drop_last=False, num_workers=0
        )
        assert loader.generator is None
        return loader

    direct, usual, rng_direct, rng_usual = _both_ways(make)
    _assert_same_batches(direct, usual)
    assert torch.equal(rng_direct, rng_usual)
    torch.manual_seed(7)
    torch.empty((), dtype=torch.int64).random_()  # the one draw of an iter()
    expected = torch.get_rng_state()
    for start in (iter_batches, iter):
        torch.manual_seed(7)
        start(make())  # the draw happens when the epoch starts, before any sample is read
        assert torch.equal(torch.get_rng_state(), expected)
    torch.manual_seed(8)  # another global state: the same order
    assert [b["x"].tolist() for b in iter(make())] == [b["x"].tolist() for b in usual]


def test_a_batch_sampler_that_draws_when_started_sees_torchs_order_of_draws() -> None:
    direct, usual, rng_direct, rng_usual = _both_ways(
        lambda: DataLoader(Numbers(), batch_sampler=EagerBatches())
    )
    _assert_same_batches(direct, usual)
    assert torch.equal(rng_direct, rng_usual)


def test_stop_iteration_from_the_data_set_ends_the_epoch_as_in_torch() -> None:
    direct, usual, _, _ = _both_ways(lambda: DataLoader(StopsEarly(), batch_size=2))
    _assert_same_batches(direct, usual)
    assert len(direct) == 3


def test_a_data_set_with_getitems_is_fetched_a_batch_at_a_time() -> None:
    dataset = BatchFetched()
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=_stack)
    batches = list(iter_batches(loader))
    assert dataset.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b["x"].flatten().tolist() for b in batches] == [
        [0.0, 1.0, 2.0, 3.0],
        [4.0, 5.0, 6.0, 7.0],
        [8.0, 9.0],
    ]


@pytest.mark.parametrize(
    "make_loader",
    [
        pytest.param(lambda: DataLoader(Stream(), batch_size=2), id="iterable data set"),
        pytest.param(lambda: DataLoader(Numbers(), batch_size=None), id="no batching"),
        pytest.param(lambda: DataLoader(Numbers(), batch_size=2, timeout=5.0), id="timeout"),
        pytest.param(
            lambda: DataLoader(Numbers(), batch_size=2, pin_memory=True),
            id="pinned",
            marks=pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true"),
        ),
    ],
)
def test_other_loaders_are_iterated_by_their_own_iterator(make_loader: Any) -> None:
    """Each of these is torch's to handle (a timeout without workers is even refused)."""
    loader = make_loader()
    try:
        expected: Any = len(list(iter(loader)))
    except AssertionError as exc:
        expected = str(exc)
    try:
        got: Any = len(list(iter_batches(loader)))
    except AssertionError as exc:
        got = str(exc)
    assert got == expected


def test_a_loader_subclass_keeps_its_own_iteration() -> None:
    CountingLoader.iterations = 0
    loader = CountingLoader(Numbers(), batch_size=5)
    assert len(list(iter_batches(loader))) == 2
    assert CountingLoader.iterations == 1


def test_batches_read_while_the_profiler_records_get_torchs_range() -> None:
    """Also when recording starts mid-epoch (a profiler schedule's warm-up ending)."""
    batches = iter_batches(DataLoader(Numbers(), batch_size=2))
    next(batches)
    with torch.autograd.profiler.profile() as profile:
        assert len(list(batches)) == 4
    names = [event.name for event in profile.function_events]
    assert names.count("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__") == 4


def _stack(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
