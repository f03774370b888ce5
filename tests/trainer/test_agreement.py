"""The choices every rank must take alike, with a fake process group (no torchrun needed)."""

from __future__ import annotations

from typing import Any

import pytest

from trainbus.bus import ConfigurationError
from trainbus.trainer import TrainingArguments
from trainbus.trainer._agreement import (
    check_same_plan,
    rank_zero_metric,
    run_fingerprint,
)
from trainbus.trainer._plan import plan_run
from trainbus.trainer._state import TrainerState


class FakeGroup:
    """Two or more ranks seen from rank 0: the other ranks' gathered values are given, and
    rank 0's value of a broadcast is ``rank_zero`` (this rank's own when ``None``)."""

    enabled = True

    def __init__(self, *others: Any, rank_zero: float | None = None) -> None:
        self.others = others
        self.rank_zero = rank_zero

    def at(self, doing: str) -> None:
        pass

    def gather(self, obj: Any) -> list[Any]:
        return [obj, *self.others]

    def from_rank_zero(self, value: float) -> float:
        return value if self.rank_zero is None else self.rank_zero


def _fingerprint(length: int = 16, ga: int = 1, **overrides: Any) -> dict[str, Any]:
    args = TrainingArguments(
        output_dir="unused",
        gradient_accumulation_steps=ga,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        **overrides,
    )
    plan = plan_run(
        batches_per_epoch=-(-length // 2),
        gradient_accumulation_steps=ga,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
    )
    state = TrainerState()
    state.compute_steps(args, plan.max_steps)
    return run_fingerprint(args, plan, state, train_length=length, eval_lengths={"": 8})


def test_ranks_with_the_same_plan_pass() -> None:
    """Equal fingerprints: nothing is raised."""
    check_same_plan(FakeGroup(_fingerprint(), _fingerprint()), _fingerprint())


def test_a_different_data_set_length_is_named_with_every_ranks_value() -> None:
    """A rank with two more samples: the error names the length and each rank's value."""
    with pytest.raises(ConfigurationError) as caught:
        check_same_plan(FakeGroup(_fingerprint(length=18)), _fingerprint())
    message = str(caught.value)
    assert "train_dataset_length: rank 0 has 16, rank 1 has 18" in message
    assert "batches_per_epoch: rank 0 has 8, rank 1 has 9" in message


def test_a_different_accumulation_is_named() -> None:
    """gradient_accumulation_steps 1 on rank 0 and 2 on rank 1 is refused, naming the field."""
    with pytest.raises(ConfigurationError, match="gradient_accumulation_steps: rank 0 has 1"):
        check_same_plan(FakeGroup(_fingerprint(ga=2)), _fingerprint())


def test_a_different_save_interval_is_named() -> None:
    """Ranks saving at different intervals would meet in different collectives."""
    with pytest.raises(ConfigurationError, match="save_steps"):
        check_same_plan(FakeGroup(_fingerprint(save_steps=7)), _fingerprint(save_steps=5))


def test_the_tracked_metric_is_rank_zeros() -> None:
    """A rank whose compute_metrics differs tracks rank 0's value; other metrics stay its own."""
    args = TrainingArguments(
        output_dir="unused", metric_for_best_model="score", use_cpu=True, report_to="none"
    )
    metrics = {"eval_score": -3.0, "eval_loss": 0.5}
    agreed = rank_zero_metric(FakeGroup(rank_zero=3.0), args, metrics)
    assert agreed == {"eval_score": 3.0, "eval_loss": 0.5}
