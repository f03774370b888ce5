"""Run every benchmark, print the headline table, write ``RESULTS.md`` and ``results.png``.

    python -m benchmarks                  # the full suite (about 35 minutes on two cores)
    python -m benchmarks --quick          # every benchmark in its quick mode (under 3 minutes)
    python -m benchmarks --only peers     # one benchmark (repeatable, or comma-separated)

Each ``bench_<topic>.py`` runs in its own subprocess, exactly as it runs alone, and leaves
``results/<topic>.json``; this runner only assembles. A benchmark that fails or runs past its
time limit is reported as such and the others still run. ``RESULTS.md`` is written from the
result files, never from figures typed in; a topic not run this time keeps its previous file,
and its own date and command are shown beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks._common import (
    BENCH_DIR,
    RESULTS_DIR,
    SKIPPED_EXIT,
    machine_card,
    read_result,
    versions,
)
from benchmarks._report import render_markdown, render_plot, targets_table

DEFAULT_LIMIT_S: Final = {"full": 900.0, "quick": 150.0, "smoke": 60.0}
SUITE_FILE: Final = "_suite.json"
"""How the last suite run went (command, date, machine, outcomes), for ``--report-only``."""


@dataclass
class Outcome:
    """How one benchmark subprocess ended."""

    topic: str
    status: str
    elapsed_s: float


def discover() -> list[str]:
    """Topics of every ``bench_<topic>.py`` next to this file, the peers comparison first."""
    topics = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    return sorted(topics, key=lambda t: (t != "peers", t))


def run_topic(topic: str, mode: str, results: Path, limit_s: float) -> Outcome:
    """Run ``python -m benchmarks.bench_<topic>`` with output passed through."""
    command = [sys.executable, "-m", f"benchmarks.bench_{topic}"]
    if mode != "full":
        command.append("--quick")
    env = dict(os.environ, TRAINBUS_BENCH_RESULTS=str(results))
    if mode == "smoke":
        env["TRAINBUS_BENCH_SMOKE"] = "1"
    print(f"\n=== {topic}: {shlex.join(command[1:])} (limit {limit_s:.0f} s)", flush=True)
    began = time.perf_counter()
    try:
        process = subprocess.run(command, cwd=BENCH_DIR.parent, env=env, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return Outcome(topic, f"timed out after {limit_s:.0f} s", time.perf_counter() - began)
    elapsed = time.perf_counter() - began
    if process.returncode == SKIPPED_EXIT:
        return Outcome(topic, "skipped (nothing to measure here)", elapsed)
    status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    return Outcome(topic, status, elapsed)


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """Every result file in ``results``, by topic; unreadable files are reported and skipped."""
    loaded: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        if path.name == SUITE_FILE:
            continue
        try:
            loaded[path.stem] = read_result(path)
        except (ValueError, OSError) as exc:
            print(f"skipping {path.name}: {exc}", file=sys.stderr)
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; the exit status is non-zero when a benchmark failed or timed out."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every benchmark in quick mode")
    parser.add_argument(
        "--smoke", action="store_true", help="the tiniest run, to keep the suite from rotting"
    )
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument(
        "--out", type=Path, default=None, help="write results, RESULTS.md and the plot here"
    )
    parser.add_argument("--limit", type=float, default=None, help="seconds per benchmark")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild RESULTS.md and the plot from the result files already there",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    available = discover()
    wanted = [name for item in args.only for name in item.split(",") if name] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)}; known: {available}")
    out_dir = args.out or BENCH_DIR
    results = out_dir / "results" if args.out else RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    limit = args.limit or DEFAULT_LIMIT_S[mode]
    command = shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])])
    started = dt.datetime.now(dt.timezone.utc)
    began = time.perf_counter()
    outcomes = [] if args.report_only else [run_topic(t, mode, results, limit) for t in wanted]
    total = time.perf_counter() - began
    loaded = load_results(results)
    context: dict[str, Any] = {
        "command": command,
        "mode": mode,
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": total,
        "machine": machine_card(),
        "versions": versions(),
        "outcomes": [o.__dict__ for o in outcomes],
    }
    suite_file = results / SUITE_FILE
    if not args.report_only:
        suite_file.write_text(json.dumps(context, indent=2) + "\n")
    elif suite_file.exists():
        # RESULTS.md keeps saying which run produced the figures, not which command re-read them.
        context = json.loads(suite_file.read_text())
        context["reassembled"] = started.isoformat(timespec="seconds")
        mode = context["mode"]
    markdown_path = out_dir / "RESULTS.md"
    plot_path = out_dir / "results.png"
    plotted = render_plot(loaded, plot_path)
    markdown_path.write_text(render_markdown(loaded, context, plot_path if plotted else None))
    print("\n=== summary")
    for outcome in outcomes:
        print(f"  {outcome.topic:<10} {outcome.status:<28} {outcome.elapsed_s:7.1f} s")
    print(targets_table(loaded))
    print(
        f"suite: {total:.0f} s; wrote {markdown_path.name}"
        + (" and results.png" if plotted else "")
    )
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
