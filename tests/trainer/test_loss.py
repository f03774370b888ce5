"""The logged training loss: Hugging Face's NaN/Inf filter, applied lazily, gives HF's numbers."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.trainer import _loss as loss_module
from trainbus.trainer._loss import LossSum, fold_on_device
from trainbus.trainer.testing import TinyRegressor

NAN, INF = float("nan"), float("inf")


def _hf_rule(losses: list[float], divisors: list[int], nan_inf_filter: bool) -> float:
    """HF's eager rule, one micro-batch at a time: the reference the lazy sum must reproduce."""
    total = 0.0
    for value, divisor in zip(losses, divisors, strict=True):
        if nan_inf_filter and (math.isnan(value) or math.isinf(value)):
            total += total / divisor
        else:
            total += value
    return total


def _sequence(seed: int, length: int) -> tuple[list[float], list[int]]:
    rng = random.Random(seed)
    losses = [
        rng.choice([NAN, INF, -INF]) if rng.random() < 0.2 else rng.random() for _ in range(length)
    ]
    divisors = sorted(rng.randint(1, 6) for _ in range(length))
    return losses, divisors


def _take(losses: list[float], divisors: list[int], nan_inf_filter: bool) -> float:
    summed = LossSum(torch.device("cpu"), nan_inf_filter=nan_inf_filter)
    for value, divisor in zip(losses, divisors, strict=True):
        summed.add(torch.tensor(value), divisor)
    return summed.take()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fold_every", [1024, 5, 1])
def test_lazy_sum_reproduces_the_eager_rule(
    seed: int, fold_every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With or without folds on the device, non-finite losses count as HF's running mean."""
    monkeypatch.setattr(loss_module, "FOLD_EVERY", fold_every)
    losses, divisors = _sequence(seed, 23)
    assert _take(losses, divisors, True) == pytest.approx(
        _hf_rule(losses, divisors, True), rel=1e-5
    )


def test_without_the_filter_a_nan_poisons_the_sum() -> None:
    """``logging_nan_inf_filter=False`` keeps HF's behaviour: the NaN shows in the log."""
    assert math.isnan(_take([0.5, NAN, 0.25], [1, 2, 3], False))
    assert _take([0.5, 0.25], [1, 2], False) == pytest.approx(0.75)


def test_fold_on_device_matches_the_rule_from_a_running_start() -> None:
    """The closed form continues from an earlier folded sum exactly as the loop would."""
    losses, divisors = _sequence(99, 40)
    start = 2.5
    expected = start
    for value, divisor in zip(losses, divisors, strict=True):
        expected += expected / divisor if not math.isfinite(value) else value
    folded = fold_on_device(
        torch.tensor(start), torch.tensor(losses), torch.tensor(divisors, dtype=torch.float), True
    )
    assert folded.item() == pytest.approx(expected, rel=1e-5)


def test_take_starts_again_from_zero() -> None:
    """After a read the next window sums only its own losses."""
    summed = LossSum(torch.device("cpu"), nan_inf_filter=True)
    summed.add(torch.tensor(1.0), 1)
    assert summed.take() == 1.0
    summed.add(torch.tensor(NAN), 1)
    summed.add(torch.tensor(3.0), 2)
    assert summed.take() == 3.0
    assert summed.take() == 0.0


@pytest.mark.parametrize("value", [0.75, NAN, INF, -INF])
@pytest.mark.parametrize("nan_inf_filter", [True, False])
def test_a_single_loss_reads_as_the_rule_says(value: float, nan_inf_filter: bool) -> None:
    """One loss per log entry (``logging_steps=1``, read without a stack) follows the same rule."""
    got = _take([value], [1], nan_inf_filter)
    expected = _hf_rule([value], [1], nan_inf_filter)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


class _NanAt(TinyRegressor):
    """Reports a NaN loss on chosen training calls; gradients stay finite (no path through it)."""

    def __init__(self, calls: set[int]) -> None:
        super().__init__(dropout=0.0)
        self.calls = calls
        self.count = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        out = super().forward(x, labels)
        if self.training and labels is not None:
            self.count += 1
            if self.count in self.calls:
                out["loss"] = out["loss"] + torch.tensor(NAN)
        return out


def _logged_losses(tmp_path: Path, nan_calls: set[int], **overrides: Any) -> list[float]:
    torch.manual_seed(0)
    run = make_run(tmp_path, model=_NanAt(nan_calls), train_size=32, eval_size=0, **overrides)
    run.trainer.train()
    return [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]


def test_the_trainer_logs_hf_filtered_losses(tmp_path: Path) -> None:
    """A NaN micro-batch inside a logging window counts as the window's running mean."""
    clean = _logged_losses(tmp_path / "clean", set(), logging_steps=1, max_steps=8)
    assert len(clean) == 8 and all(math.isfinite(x) for x in clean)
    windows = _logged_losses(tmp_path / "nan", {3, 6}, logging_steps=4, max_steps=8)
    per_step = [NAN if step in (3, 6) else clean[step - 1] for step in range(1, 9)]
    expected = [
        _hf_rule(per_step[0:4], [1, 2, 3, 4], True) / 4,
        _hf_rule(per_step[4:8], [1, 2, 3, 4], True) / 4,
    ]
    assert windows == pytest.approx(expected, rel=1e-5)
