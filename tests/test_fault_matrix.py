"""The fault matrix: real training runs under tracker faults and kills lose and repeat nothing.

Each seed is one run of ``trainbus train`` (tiny regression model, 150 steps) reporting to a real
MLflow server behind a fault proxy, to TensorBoard and to a user sink, with outages, 5xx, 429 and
latency injected at seeded steps, and a SIGKILL or a clean end (and SIGTERM runs of their own); then
``trainbus sync``. Every journal point is looked up in each destination, and the run must end with
the status its ending calls for, in ``run.json`` and MLflow (``tests/support/chaos.py``). The longer
run of the same harness is ``benchmarks/bench_chaos.py``. A failing seed reproduces with
``make_plan(seed, steps=STEPS, fault_s=FAULT_S)``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import FAULT_KINDS, compare_points, make_plan, run_plan

STEPS = 150
FAULT_S = (1.5, 2.5)
SEEDS = (101, 103, 108, 112, 129)
"""Chosen so that together they inject every fault kind and end both ways (checked below)."""
SIGTERM_SEEDS = (5, 6)


def test_matrix_seeds_cover_every_fault_kind_and_both_ends() -> None:
    """The CI seeds together inject outages, 5xx, 429 and latency, and end cleanly and killed."""
    plans = [make_plan(seed, steps=STEPS, fault_s=FAULT_S) for seed in SEEDS]
    assert {f.kind for plan in plans for f in plan.faults} == set(FAULT_KINDS)
    assert {plan.end for plan in plans} == {"complete", "sigkill"}
    assert make_plan(SEEDS[0], steps=STEPS) == make_plan(SEEDS[0], steps=STEPS)


def test_comparison_counts_a_lost_and_a_duplicated_point() -> None:
    """A point missing from a destination is lost and one found twice is duplicated."""
    expected = Counter({("loss", 1): 1, ("loss", 2): 1, ("loss", 3): 1})
    found = Counter({("loss", 1): 1, ("loss", 3): 2})
    lost, duplicated, examples = compare_points(expected, found)
    assert (lost, duplicated) == (1, 1)
    assert examples == ["lost loss@2", "twice loss@3"]


@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_faults_then_sync_lose_and_repeat_no_point(
    seed: int, tmp_path: Path, mlflow_server: Any
) -> None:
    """After seeded tracker faults and a kill or a clean end, sync leaves every point once."""
    plan = make_plan(seed, steps=STEPS, fault_s=FAULT_S)
    outcome = run_plan(plan, tmp_path, mlflow_server.url)
    assert outcome.ok, outcome.summary()
    assert outcome.journal_points > 0, outcome.summary()
    assert set(outcome.lost) == {"mlflow", "tensorboard", "jsonlines"}, outcome.summary()


@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.parametrize("seed", SIGTERM_SEEDS)
def test_sigterm_mid_run_stops_gracefully_and_loses_nothing(
    seed: int, tmp_path: Path, mlflow_server: Any
) -> None:
    """SIGTERM mid-run exits 143 with the run killed in run.json and MLflow, every point once."""
    plan = make_plan(seed, steps=STEPS, ends=("sigterm",), fault_s=FAULT_S)
    outcome = run_plan(plan, tmp_path, mlflow_server.url)
    assert outcome.ok, outcome.summary()
    assert outcome.exit_code == 143, outcome.summary()
    assert outcome.run_status == "killed", outcome.summary()
    assert outcome.mlflow_status == "KILLED", outcome.summary()
