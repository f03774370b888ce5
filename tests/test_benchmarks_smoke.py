"""The benchmark suite keeps running: a tiny run end to end, and the report's honesty rules.

The smoke run trains the shared workload for a fraction of a second per contender, without an
MLflow server; contenders whose peer packages are missing are skipped by the suite itself.
Nothing here asserts a speed: speed targets live in ``benchmarks/``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.__main__ import SUITE_FILE, load_results
from benchmarks._common import RESULTS_DIR, SKIPPED_EXIT
from benchmarks._report import render_markdown, target_rows
from benchmarks.bench_hf import Run, disagreement

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_suite_writes_results_markdown_and_plot(tmp_path: Path) -> None:
    """``python -m benchmarks --smoke`` measures the floor and trainbus and writes all outputs."""
    command = [sys.executable, "-m", "benchmarks", "--smoke", "--only", "peers", "--out"]
    done = subprocess.run(
        [*command, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "peers.json").read_text())
    measured = {row["contender"]: row for row in result["tables"]["peers"]}
    assert measured["floor"]["steps_per_s"] > 0
    assert measured["trainbus"]["steps_per_s"] > 0
    assert measured["trainbus"]["error"] is None
    assert result["machine"]["cores"] >= 1
    assert result["versions"]["torch"]
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in markdown
    assert "![" in markdown
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_hf_benchmark_trains_the_same_bert_on_both_trainers(tmp_path: Path) -> None:
    """``bench_hf`` in smoke mode trains the tiny BERT on transformers' Trainer and on ours, finds
    the same training in both, and writes steps/s and the ratio."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_hf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINBUS_BENCH_RESULTS": str(tmp_path), "TRAINBUS_BENCH_SMOKE": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "hf.json").read_text())
    rows = {row["contender"]: row for row in result["tables"]["time"]}
    assert set(rows) == {"transformers", "trainbus"}
    for row in rows.values():
        assert row["global_step"] == result["steps"]
        assert row["loss_entries"] == result["steps"]
        assert row["steps_per_s"] > 0
    paired = result["headline"][0]
    assert "median of 1 paired ratios" in paired["name"]
    assert math.isfinite(paired["value"])
    assert paired["met"] == (paired["value"] > 1)


def test_teardown_benchmark_times_the_end_of_a_run_and_checks_delivery(tmp_path: Path) -> None:
    """``bench_teardown`` in smoke mode trains against a real MLflow server behind the latency
    proxy, times each case's end against its final work and one round trip, and finds every
    loss point in MLflow exactly once."""
    pytest.importorskip("mlflow")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_teardown"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRAINBUS_BENCH_RESULTS": str(tmp_path), "TRAINBUS_BENCH_SMOKE": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "teardown.json").read_text())
    rows = {row["case"]: row for row in result["tables"]["teardown"]}
    assert set(rows) == {"no final work", "final evaluation and save"}
    for row in rows.values():
        assert row["code"] == "after"
        assert row["end_ms"] > row["final_work_ms"] > 0
        assert row["round_trip_ms"] >= 200  # the proxy adds 200 ms to every request
        assert row["points_once"] is True
    for item in result["headline"]:
        assert item["value"] == rows[item["name"].rsplit(": ", 1)[1]]["end_ms"]
        assert isinstance(item["met"], bool)


def test_hf_benchmark_names_runs_that_trained_differently() -> None:
    """The apples-to-apples check of ``bench_hf`` names a differing step count, number of loss
    entries, mean loss or single loss entry, and accepts runs within its tolerances."""
    run = Run((1.0, 1.0, 0.01), global_step=20, training_loss=0.5, losses=(0.7, 0.3))
    assert disagreement(run, run, 1e-5, 1e-5) is None
    assert disagreement(run, replace(run, training_loss=0.51), 0.05) is None
    steps = disagreement(run, replace(run, global_step=19), 0.05)
    assert steps == "optimizer steps: trainbus 19, transformers 20"
    entries = disagreement(run, replace(run, losses=(0.7,)), 0.05)
    assert entries == "loss entries: trainbus 1, transformers 2"
    mean = disagreement(run, replace(run, training_loss=0.6), 0.05)
    assert mean is not None and mean.startswith("mean loss: trainbus 0.6,")
    entry = disagreement(run, replace(run, losses=(0.7, 0.31)), 0.05, 1e-5)
    assert entry is not None and entry.startswith("loss entry 2: trainbus 0.31,")
    assert disagreement(run, replace(run, training_loss=math.nan), 0.05) is not None


def test_targets_nobody_measured_say_so() -> None:
    """A README target without a result, and every GPU row, reads 'not measured', never a number."""
    results = {
        "bus": {
            "quick": False,
            "headline": [
                {"name": "publish cost per event", "value": 1.2, "unit": "us", "met": True}
            ],
        }
    }
    rows = target_rows(results)
    publish = next(r for r in rows if r["target"].startswith("publish cost"))
    assert publish["met"] == "**met**"
    assert publish["measured"] == "1.200 us"
    lag = next(r for r in rows if r["target"].startswith("host event-loop lag"))
    assert lag["measured"] == "not measured"
    gpu = [r for r in rows if "GPU" in r["target"]]
    assert gpu
    assert all(r["measured"] == "not measured" for r in gpu)


def test_gpu_figures_fill_the_gpu_rows_and_never_a_cpu_target() -> None:
    """Figures from ``bench_gpu`` (another machine) land under the GPU rows, not the CPU targets."""
    title = "publish cost per event with a CUDA training thread"
    results = {
        "gpu": {
            "quick": False,
            "headline": [
                {"name": f"{title}, median", "value": 900.0, "unit": "ns", "met": True},
            ],
        }
    }
    rows = target_rows(results)
    cpu_publish = next(r for r in rows if r["target"].startswith("publish cost per event <="))
    assert cpu_publish["measured"] == "not measured"
    gpu_publish = [r for r in rows if r["target"] == title]
    assert [r["measured"] for r in gpu_publish] == ["900.0 ns"]
    assert gpu_publish[0]["source"] == "gpu"
    trainer_gpu = next(r for r in rows if r["target"].endswith("on a CUDA GPU"))
    assert trainer_gpu["measured"] == "not measured"


def test_gpu_benchmark_runs_its_steps_on_the_cpu_and_writes_nothing(tmp_path: Path) -> None:
    """``bench_gpu --cpu-dry-run`` exercises every code path of the GPU benchmark here."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--cpu-dry-run", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINBUS_BENCH_RESULTS": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "small MLP (launch-bound)" in done.stdout
    assert "CPU dry run, nothing written" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_gpu_benchmark_without_cuda_exits_as_skipped(tmp_path: Path) -> None:
    """Without CUDA the GPU benchmark measures nothing, writes nothing and says it skipped."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINBUS_BENCH_RESULTS": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == SKIPPED_EXIT, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no CUDA device here" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_targets_table_shows_a_short_note_and_the_section_keeps_the_whole() -> None:
    """A figure's row carries the first clause of its note; its topic's section the full note."""
    context = {
        "command": "python -m benchmarks",
        "date": "2026-01-02T00:00:00+00:00",
        "mode": "full",
        "elapsed_s": 1.0,
        "machine": {"cpu": "EPYC", "cores": 2},
        "versions": {"torch": "2.13.0+cpu"},
        "outcomes": [],
    }
    long_context = "measured beside a 10 ms ticker after warm_up(); the idle loop's p99 was 0.40 ms"
    results = {
        "embed": {
            "headline": [
                {
                    "name": "host loop lag p99 while training (asyncio)",
                    "value": 1.09,
                    "unit": "ms",
                    "target": "<= 10 ms",
                    "met": True,
                    "note": f"median of 3 runs; {long_context}",
                }
            ]
        }
    }
    (row,) = [r for r in target_rows(results) if r["source"] == "embed"]
    assert row["note"] == "median of 3 runs"
    assert row["figure"] == "host loop lag p99 while training (asyncio)"
    markdown = render_markdown(results, context, None)
    table, section = markdown.split("## embed")
    assert long_context not in table
    assert "| 1.090 ms | **met** | embed | median of 3 runs |" in table
    assert f"1.090 ms; median of 3 runs; {long_context}." in section


def test_results_markdown_holds_only_what_the_result_files_say() -> None:
    """The committed RESULTS.md is exactly what the generator writes from the committed result
    files, so no figure in it was typed in or left behind by an older run."""
    committed = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    context = json.loads((RESULTS_DIR / SUITE_FILE).read_text())
    marker = "Re-assembled from the result files on "
    if marker in committed:
        context["reassembled"] = committed.split(marker, 1)[1].split(".", 1)[0]
    plot = ROOT / "benchmarks" / "results.png"
    expected = render_markdown(load_results(RESULTS_DIR), context, plot if plot.exists() else None)
    assert committed == expected


@pytest.mark.slow
def test_bridge_benchmark_runs_the_three_contenders(tmp_path: Path) -> None:
    """``bench_bridge`` in smoke mode trains transformers.Trainer with no callback, with its
    MLflowCallback and with TrainbusCallback against a real MLflow server behind the proxy, finds
    every loss point in MLflow once for the bridge, and writes both ratios for each callback."""
    pytest.importorskip("transformers")
    pytest.importorskip("mlflow")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_bridge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRAINBUS_BENCH_RESULTS": str(tmp_path), "TRAINBUS_BENCH_SMOKE": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "bridge.json").read_text())
    rows = {row["contender"]: row for row in result["tables"]["bridge"]}
    assert len(rows) == 3
    bridge = rows["TrainbusCallback (MLflow sink)"]
    assert bridge["loss_points_in_mlflow"] == bridge["loss_points_logged"] == result["steps"]
    assert all(row["steps_per_s"] > 0 for row in rows.values())
    assert len(result["headline"]) == 4
    assert all(math.isfinite(h["value"]) for h in result["headline"])
