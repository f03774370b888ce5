"""The loop's parts: schedules, run length, data order, accumulation maths, async hooks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from torch.utils.data import IterableDataset

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
from trainbus.trainer._data import EpochSampler, move_to_device
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer._plan import plan_run, resume_point
from trainbus.trainer._schedules import create_scheduler
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


def _rates(name: str, warmup: int, total: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = create_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_follow_hf_formulas() -> None:
    """Linear, cosine, constant and constant-with-warmup give HF's rate for each update."""
    assert _rates("linear", 2, 6) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])
    assert _rates("constant", 2, 4) == [1.0] * 4
    assert _rates("constant_with_warmup", 2, 4) == pytest.approx([0.0, 0.5, 1.0, 1.0])
    cosine = _rates("cosine", 0, 4)
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_unknown_schedule_is_a_configuration_error() -> None:
    """A schedule name outside Hugging Face's is refused with the valid names."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigurationError, match="'linear', 'cosine'"):
        create_scheduler("exponential", optimizer, num_warmup_steps=0, num_training_steps=2)


def test_run_length_from_epochs_max_steps_and_iterables() -> None:
    """Epoch runs round up partial windows; max_steps wins; iterables need max_steps."""
    by_epochs = plan_run(
        batches_per_epoch=10, gradient_accumulation_steps=4, max_steps=-1, num_train_epochs=2
    )
    assert (by_epochs.max_steps, by_epochs.num_train_epochs, by_epochs.updates_per_epoch) == (
        6,
        2,
        3,
    )
    by_steps = plan_run(
        batches_per_epoch=10, gradient_accumulation_steps=4, max_steps=7, num_train_epochs=1
    )
    assert (by_steps.max_steps, by_steps.num_train_epochs) == (7, 3)
    assert resume_point(7, by_steps) == (2, 1)
    with pytest.raises(ConfigurationError, match="max_steps must be a positive number"):
        plan_run(
            batches_per_epoch=None, gradient_accumulation_steps=1, max_steps=-1, num_train_epochs=1
        )


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    """Each epoch has its own permutation; starting mid-way yields the rest of the same one."""
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start=4)
    assert list(sampler) == full[4:]
    sampler.set_epoch(2)
    assert list(sampler) != full and sorted(full) == list(range(10))


def _final_weights(tmp_path: Path, batch: int, ga: int, size: int = 20) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    run = make_run(
        tmp_path / f"b{batch}-ga{ga}",
        model=TinyRegressor(dropout=0.0),
        train_size=size,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga,
        num_train_epochs=2,
        logging_strategy="no",
        max_grad_norm=0.0,
        eval_size=0,
    )
    run.trainer.train()
    return run.trainer.model.state_dict()


@pytest.mark.parametrize(("batch", "ga", "reference"), [(2, 2, 4), (2, 4, 8)])
def test_accumulation_matches_one_bigger_batch(
    tmp_path: Path, batch: int, ga: int, reference: int
) -> None:
    """Batch b with GA k updates like batch b*k, the partial last window included."""
    accumulated = _final_weights(tmp_path, batch, ga)
    single = _final_weights(tmp_path, reference, 1)
    for name, value in single.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6)


class _Stream(IterableDataset[dict[str, torch.Tensor]]):
    def __iter__(self) -> Any:
        data = RegressionDataset(12)
        return iter(data[i] for i in range(len(data)))


def test_iterable_dataset_trains_for_max_steps(tmp_path: Path) -> None:
    """A data set without a length trains for ``max_steps``, re-reading it as often as needed."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(TinyRegressor(), args, train_dataset=_Stream(), launcher=LocalLauncher())
    assert trainer.train().global_step == 5


def test_async_hooks_are_awaited_at_the_barrier(tmp_path: Path) -> None:
    """An ``async def`` hook runs on the bus's loop and its control decision is obeyed."""

    class AsyncStop(TrainerCallback):
        async def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 2:
                control.should_training_stop = True
            return control

    run = make_run(tmp_path, max_steps=6, callbacks=[AsyncStop()])
    assert run.trainer.train().global_step == 2


def test_cancelling_train_async_on_the_local_launcher_stops_after_the_current_step(
    tmp_path: Path,
) -> None:
    """The fallback launcher, like the orchestrator's, turns a cancelled caller into a stop.

    The stop holds even when the cancellation comes before training began (a cold process takes
    longer than the 0.5 s to get there), which ``on_train_begin`` would otherwise clear.
    """
    run = make_run(tmp_path, max_steps=1_000_000, train_size=64)

    async def main() -> None:
        with anyio.fail_after(60), anyio.move_on_after(0.5):
            await run.trainer.train_async()

    anyio.run(main)
    assert 0 < run.trainer.state.global_step < 1_000_000
    assert run.trainer.control.should_training_stop


def test_a_stop_requested_before_training_holds_and_is_for_one_run_only(tmp_path: Path) -> None:
    """``request_stop()`` before ``train()`` survives ``on_train_begin``: one step, then stop;
    the next ``train()`` runs in full."""
    run = make_run(tmp_path, max_steps=4)
    run.trainer.request_stop()
    assert run.trainer.train().global_step == 1
    assert run.trainer.train().global_step == 4


def test_move_to_device_walks_nested_batches_and_keeps_tensors_already_there() -> None:
    """Tensors already on the device come back as the same objects; others are moved."""
    cpu = torch.device("cpu")
    x, y = torch.ones(2), torch.zeros(2, dtype=torch.long)
    batch = {"x": x, "pair": (y, "text"), "nested": {"ids": [y]}, "n": 3}
    moved = move_to_device(batch, cpu)
    assert moved["x"] is x and moved["pair"][0] is y and moved["nested"]["ids"][0] is y
    assert moved["pair"][1] == "text" and moved["n"] == 3 and isinstance(moved["pair"], tuple)
    meta = move_to_device({"x": x}, torch.device("meta"))
    assert meta["x"].device.type == "meta" and meta["x"].shape == x.shape
