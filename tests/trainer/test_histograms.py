"""Histograms of gradients and parameters, published only for a sink that asks (WANDB_WATCH)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.trainer.recording import make_run
from trainbus.bus._events import Histograms
from trainbus.trainer._histograms import (
    BINS,
    histogram_interval,
    tensor_histograms,
    watch_steppers,
)
from trainbus.trainer._precision import Steppers


def test_histograms_count_finite_values_in_64_equal_bins() -> None:
    """Each tensor's finite values in 64 bins between its smallest and largest finite value
    (what wandb.watch logs); a constant tensor is one bin; one without finite values is left
    out; NaN and infinities are not counted."""
    torch.manual_seed(0)
    spread = torch.randn(10, 7)
    spread[0, 0], spread[1, 1], spread[2, 2] = math.nan, math.inf, -math.inf
    named = [
        ("spread", spread),
        ("constant", torch.full((5,), 0.5, dtype=torch.float16)),
        ("hollow", torch.tensor([math.nan, math.inf])),
        ("empty", torch.empty(0)),
    ]
    result = tensor_histograms(named)
    assert set(result) == {"spread", "constant"}
    finite = spread[torch.isfinite(spread)]
    expected = torch.histc(finite, bins=BINS, min=finite.min().item(), max=finite.max().item())
    got = result["spread"]
    assert (got.low, got.high) == (finite.min().item(), finite.max().item())
    assert got.counts == [int(c) for c in expected.tolist()] and sum(got.counts) == 67
    assert result["constant"].counts == [5] and result["constant"].low == 0.5


def test_a_sink_asking_gets_histograms_at_every_interval(tmp_path: Path) -> None:
    """With a sink asking for both, the trainer publishes gradient and parameter histograms of
    every named parameter at steps max(100, logging_steps) apart, and nowhere else."""
    run = make_run(tmp_path, train_size=8, max_steps=200, logging_steps=150)
    run.sink.wants_histograms = frozenset({"gradients", "parameters"})
    run.trainer.train()
    seen = [e for e in run.bus_events() if isinstance(e, Histograms)]
    assert histogram_interval(150) == 150
    assert [(e.global_step, e.source) for e in seen] == [
        (150, "gradients"),
        (150, "parameters"),
    ]
    names = {n for n, _ in run.trainer.model.named_parameters()}
    assert all(set(e.histograms) == names for e in seen)


def test_no_sink_asking_costs_nothing(tmp_path: Path) -> None:
    """Without a sink asking, nothing is published and the loop's steppers are left as they are
    (no per-step test)."""
    run = make_run(tmp_path, train_size=8, max_steps=100, logging_steps=1)
    run.trainer.train()
    assert not [e for e in run.bus_events() if isinstance(e, Histograms)]
    steppers = Steppers(torch.nn.utils.clip_grad_norm_, lambda: None, lambda: None)
    assert watch_steppers(steppers, run.trainer) is steppers
