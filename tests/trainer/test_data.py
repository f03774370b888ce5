"""Data: ``iter_batches`` yields exactly what ``iter(loader)`` would; columns, collators,
samplers and loader options as Hugging Face builds them."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import Trainer, TrainingArguments, default_data_collator
from trainbus.trainer._collators import default_collator_for
from trainbus.trainer._data import iter_batches, train_dataloader
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer._samplers import LengthGroupedSampler, SequentialEpochSampler


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
        loader = train_dataloader(Numbers(), batch_size=4, collator=_stack, seed=3)
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


# --- columns, collators, samplers, loader options ---------------------------------------------


class Classifier(nn.Module):
    """Takes ``input_ids`` and ``labels`` only; any other keyword is a TypeError."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(16, 2)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.embed(input_ids)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class QuestionAnsweringToy(nn.Module):
    def forward(
        self, x: torch.Tensor, start_positions: Any = None, end_positions: Any = None
    ) -> Any:
        return x


RAW_ROWS = [
    {"text": "a b", "idx": i, "input_ids": [i % 16, (i + 1) % 16], "label": i % 2} for i in range(6)
]


def _trainer(tmp_path: Path, model: nn.Module | None = None, **overrides: Any) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, **overrides
    )
    return Trainer(
        model or Classifier(),
        args,
        train_dataset=RAW_ROWS,
        eval_dataset=RAW_ROWS,
        launcher=LocalLauncher(),
    )


def test_columns_forward_does_not_take_are_dropped_before_collation(tmp_path: Path) -> None:
    """``text`` and ``idx`` never reach the collator; ``label`` is kept and becomes ``labels``."""
    trainer = _trainer(tmp_path, per_device_train_batch_size=3)
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch) == ["input_ids", "labels"]
    assert trainer.evaluate()["eval_loss"] > 0


def test_remove_unused_columns_false_passes_every_column(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, remove_unused_columns=False)
    batch = next(iter(trainer.get_eval_dataloader()))
    assert sorted(batch) == ["idx", "input_ids", "labels"]  # strings are left out by the collator
    with pytest.raises(TypeError, match="idx"):
        trainer.evaluate()


def test_rows_without_any_forward_column_are_named_in_one_error(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    loader = trainer.get_test_dataloader([{"words": "a"}, {"words": "b"}])
    with pytest.raises(ConfigurationError, match=r"test set.*\['words'\].*remove_unused_columns"):
        next(iter(loader))


def test_label_names_come_from_forward_unless_given(tmp_path: Path) -> None:
    assert _trainer(tmp_path).label_names == ["labels"]
    assert _trainer(tmp_path, QuestionAnsweringToy()).label_names == [
        "start_positions",
        "end_positions",
    ]
    assert _trainer(tmp_path, label_names=["y"]).label_names == ["y"]


def test_default_collator_renames_labels_and_skips_strings() -> None:
    batch = default_data_collator(
        [
            {"label": 1, "text": "x", "ids": np.array([1, 2]), "none": None},
            {"label": 0, "text": "y", "ids": np.array([3, 4]), "none": None},
        ]
    )
    assert sorted(batch) == ["ids", "labels"]
    assert batch["labels"].dtype == torch.long and batch["ids"].shape == (2, 2)
    floats = default_data_collator([{"label_ids": [0.5, 1.0]}, {"label_ids": [1.5, 2.0]}])
    assert floats["labels"].dtype == torch.float32 and floats["labels"].shape == (2, 2)


def test_a_tokenizer_gets_the_padding_collator(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tests.support.hf_differential import tiny_vocab

    tokenizer = transformers.BertTokenizerFast(vocab=str(tiny_vocab(tmp_path)))
    assert isinstance(default_collator_for(tokenizer), transformers.DataCollatorWithPadding)
    assert default_collator_for(None) is default_data_collator
    assert default_collator_for(object()) is default_data_collator


def test_length_grouping_orders_as_transformers_for_the_same_generator() -> None:
    """Our grouping of a seeded permutation is transformers' (its evaluation order)."""
    pt_utils = pytest.importorskip("transformers.trainer_pt_utils")
    lengths = [
        int(n) for n in torch.randint(1, 50, (300,), generator=torch.Generator().manual_seed(4))
    ]
    theirs = pt_utils.LengthGroupedSampler(
        4, lengths=lengths, generator=torch.Generator().manual_seed(9)
    )
    assert list(LengthGroupedSampler(lengths, 4, seed=9)) == list(theirs)


def test_length_grouped_batches_hold_similar_lengths_and_resume_mid_epoch() -> None:
    lengths = [
        int(n) for n in torch.randint(1, 100, (400,), generator=torch.Generator().manual_seed(1))
    ]
    sampler = LengthGroupedSampler(lengths, 8, seed=3)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    assert lengths[order[0]] == max(lengths)
    spread = np.mean([np.ptp([lengths[i] for i in order[k : k + 8]]) for k in range(0, 400, 8)])
    assert spread < 15  # random batches of 8 spread over ~75
    sampler.set_epoch(2, start=40)
    assert list(sampler) == order[40:]
    sampler.set_epoch(3)
    assert list(sampler) != order


def test_group_by_length_needs_a_length_per_sample(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, train_sampling_strategy="group_by_length")
    assert isinstance(trainer.get_train_dataloader().sampler, LengthGroupedSampler)
    trainer.train_dataset = [{"x": 1}]
    with pytest.raises(ConfigurationError, match="'input_ids' entry"):
        trainer.get_train_dataloader()


def test_sequential_sampling_keeps_the_data_set_order(tmp_path: Path) -> None:
    sampler = (
        _trainer(tmp_path, train_sampling_strategy="sequential").get_train_dataloader().sampler
    )
    assert isinstance(sampler, SequentialEpochSampler)
    sampler.set_epoch(5, start=2)
    assert list(sampler) == [2, 3, 4, 5]


def test_loader_options_reach_torch_and_keep_the_direct_path_on_cpu(tmp_path: Path) -> None:
    """On a CPU nothing is pinned (``iter_batches`` reads directly); the options are passed."""
    loader = _trainer(tmp_path, dataloader_drop_last=True).get_train_dataloader()
    assert not loader.pin_memory and loader.drop_last
    assert inspect.isgenerator(iter_batches(loader))
    workers = _trainer(
        tmp_path,
        dataloader_num_workers=2,
        dataloader_prefetch_factor=3,
        dataloader_persistent_workers=True,
    )
    loader = workers.get_eval_dataloader()
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (2, 3, True)
    assert workers.get_eval_dataloader() is loader  # persistent workers: built once per name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor applies to worker"),
        ({"dataloader_persistent_workers": True}, "dataloader_persistent_workers applies"),
        ({"include_for_metrics": ["logits"]}, "include_for_metrics entry must be one of 'inputs'"),
        ({"train_sampling_strategy": "batch_rebalance"}, "'batch_rebalance' is not supported"),
        ({"eval_accumulation_steps": 0}, "eval_accumulation_steps must be an integer >= 1"),
        ({"label_names": "labels"}, "label_names must be a list of strings"),
    ],
)
def test_bad_data_arguments_name_the_field(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TrainingArguments(output_dir=str(tmp_path), **overrides)


def test_loader_options_reach_torch_and_pinning_is_for_cuda_only(tmp_path: Path) -> None:
    """``dataloader_in_order=False`` reaches the worker loader; ``dataloader_pin_memory`` (on
    by default, as in transformers) pins nothing on a CPU, so the direct read path stays."""
    trainer = _trainer(tmp_path, dataloader_num_workers=1, dataloader_in_order=False)
    assert trainer.get_train_dataloader().in_order is False
    assert _trainer(tmp_path).get_train_dataloader().in_order is True
    pinned = _trainer(tmp_path, dataloader_pin_memory=True)
    assert pinned.args.dataloader_pin_memory is False  # use_cpu: nothing to pin for
    assert pinned.get_train_dataloader().pin_memory is False
