"""The benchmark suite keeps running: a tiny run end to end, and the report's honesty rules.

The smoke run trains the shared workload for a fraction of a second per contender, without an
MLflow server; contenders whose peer packages are missing are skipped by the suite itself.
Nothing here asserts a speed: speed targets live in ``benchmarks/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks._common import SKIPPED_EXIT
from benchmarks._readme import README_END, README_START, readme_section, update_readme
from benchmarks._report import BESIDE, target_rows

ROOT = Path(__file__).resolve().parent.parent
SUITE_CONTEXT = {
    "command": "python -m benchmarks",
    "date": "2026-01-02T00:00:00+00:00",
    "mode": "full",
    "machine": {"cpu": "EPYC", "cores": 2, "memory_gib": 23.5, "gpu": "none"},
    "versions": {"torch": "2.13.0+cpu"},
}
"""A full suite run on this machine, for the README section's first sentence."""


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


def test_readme_update_touches_only_the_marked_section(tmp_path: Path) -> None:
    """The runner rewrites the text between the benchmark markers and leaves the rest alone."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmarks\n{README_START}\nold\n{README_END}\n\n## After\n")
    assert update_readme(readme, f"{README_START}\nnew\n{README_END}")
    text = readme.read_text()
    assert "old" not in text
    assert text == f"# x\n\n## Benchmarks\n{README_START}\nnew\n{README_END}\n\n## After\n"
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("# y\n")
    assert not update_readme(unmarked, "anything")
    assert unmarked.read_text() == "# y\n"


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


def test_readme_names_the_gpu_run_and_keeps_each_figure_with_its_note() -> None:
    """The README's GPU sentence says where and with what it was measured, and never drops the
    paired median that qualifies a best-of ratio."""
    gpu_machine = {"cpu": "Xeon", "cores": 16, "memory_gib": 125.9, "gpu": "H200", "commit": "abc"}
    results = {
        "gpu": {
            "command": "python -m benchmarks.bench_gpu",
            "date": "2026-01-01T00:00:00+00:00",
            "machine": gpu_machine,
            "versions": {"torch": "2.11.0"},
            "headline": [
                {
                    "name": "trainbus Trainer vs hand-written loop on a CUDA GPU: small MLP",
                    "value": 1.05,
                    "unit": "x",
                    "met": None,
                    "note": "median of the paired ratios 1.094",
                }
            ],
        }
    }
    text = readme_section(results, SUITE_CONTEXT)
    assert "measured on another machine (H200, Xeon, 16 cores" in text
    assert "torch 2.11.0, commit abc" in text
    assert "1.050 x (small MLP; median of the paired ratios 1.094)" in text
    assert "publish cost per event with a CUDA training thread: not measured" in text


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


def test_readme_keeps_a_figure_that_qualifies_a_verdict_beside_it() -> None:
    """The Trainer's ratio to a hand loop taking its shortcuts has no target of its own, but the
    README shows it next to the target's verdict, so the verdict is read with it."""
    best = "time per step, steady state (after the first 10 steps), best of 41 runs each"
    results = {
        "trainer": {
            "headline": [
                {
                    "name": f"trainbus / hand loop, {best}",
                    "value": 1.008,
                    "unit": "x",
                    "target": "<= 1.03",
                    "met": True,
                },
                {
                    "name": f"trainbus / hand loop taking the Trainer's shortcuts, {BESIDE}, "
                    + best,
                    "value": 1.029,
                    "unit": "x",
                    "target": "-",
                    "met": None,
                },
                {
                    "name": f"trainbus / hand loop, {best.replace('best of 41 runs', 'median')}",
                    "value": 1.007,
                    "unit": "x",
                    "target": "-",
                    "met": None,
                },
            ]
        }
    }
    line = next(
        row
        for row in readme_section(results, SUITE_CONTEXT).splitlines()
        if row.startswith("| trainbus Trainer vs hand-written loop (time/step)")
    )
    assert "**met**" in line
    assert (
        "1.029 x (trainer, no target: trainbus / hand loop taking the Trainer's shortcuts" in line
    )
    assert "1.007" not in line  # other figures without a target stay in RESULTS.md only
