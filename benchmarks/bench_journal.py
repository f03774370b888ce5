"""How big a million-step run's journal is on disk, and how long ``show`` and ``plot`` take over it.

A synthetic run journals what the Trainer publishes per optimizer step (``StepBegin``,
``PreOptimizerStep``, ``OptimizerStep``, ``StepEnd``) and a ``Log`` (loss, grad norm, learning
rate, epoch) every 10 steps, in bursts of 100 steps as the bus drains them, through the bus's own
segmented writer (64 MiB segments). Then:

* **plain**: bytes on disk with compression off, per event and per million steps;
* **compressed**: every finished segment compressed as it is once every sink has acknowledged
  it (the live segment stays plain), and how long compressing took (a background thread in a run);
* **show / plot**: wall time of ``python -m trainbus show RUN_DIR`` and ``... plot RUN_DIR`` over
  the compressed journal, interpreter start included (what a user waits for).

Targets: under 100 MB per million steps compressed; ``show`` under 10 s.

Run: ``python -m benchmarks.bench_journal [--quick]``; writes ``benchmarks/results/journal.json``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    BENCH_DIR,
    Headline,
    bench_mode,
    bench_parser,
    format_table,
    write_result,
)
from trainbus.bus import (
    Event,
    JournalSettings,
    Log,
    OptimizerStep,
    PreOptimizerStep,
    StepBegin,
    StepEnd,
)
from trainbus.bus._segmented import SegmentedJournalWriter, compact_segments
from trainbus.orchestrator.rundir import RunDir, RunRecord

STEPS = {"full": 1_000_000, "quick": 100_000, "smoke": 2_000}
BURST_STEPS = 100
LOG_EVERY = 10
TARGET_MB_PER_MILLION = 100.0
TARGET_SHOW_S = 10.0
RUN_ID = "20260101-000000-a1b2c3"
MB = 1e6


def _burst(first_step: int, seq: int) -> tuple[list[Event], int]:
    """``BURST_STEPS`` steps' events from ``first_step`` on, numbered from ``seq``."""
    events: list[Event] = []
    add = events.append
    for step in range(first_step, first_step + BURST_STEPS):
        t = 1.7e9 + step * 0.01
        epoch = step / 10_000
        for kind in (StepBegin, PreOptimizerStep, OptimizerStep):
            add(kind(run_id=RUN_ID, seq=seq, time=t, global_step=step, epoch=epoch))
            seq += 1
        add(StepEnd(run_id=RUN_ID, seq=seq, time=t, global_step=step + 1, epoch=epoch))
        seq += 1
        if (step + 1) % LOG_EVERY == 0:
            logs = {
                "loss": 2.0 / (1 + step / 1000),
                "grad_norm": 0.5 + (step % 97) / 100,
                "learning_rate": 5e-5 * (1 - step / 2e6),
                "epoch": epoch,
            }
            add(Log(run_id=RUN_ID, seq=seq, time=t, global_step=step + 1, epoch=epoch, logs=logs))
            seq += 1
    return events, seq


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def _write_run(root: Path, steps: int) -> tuple[RunDir, int, float]:
    """A finished run directory with ``steps`` steps journaled plain; events and seconds taken."""
    run_dir = RunDir(root / "trainbus" / RUN_ID)
    run_dir.create()
    run_dir.write_record(
        RunRecord(run_id=RUN_ID, run_name="journal-bench", output_dir=str(root), status="completed")
    )
    writer = SegmentedJournalWriter.open(
        run_dir.path / "journal", settings=JournalSettings(compress=False)
    )
    seq = 0
    started = time.perf_counter()
    for first in range(0, steps, BURST_STEPS):
        events, seq = _burst(first, seq)
        writer.append(events)
    writer.close()
    return run_dir, seq, time.perf_counter() - started


def _cli(*args: str) -> tuple[float, float]:
    """Wall and CPU seconds ``python -m trainbus ARGS`` takes; raises if it fails.

    The CPU time is the figure a busy shared machine does not inflate.
    """
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR.parent)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "trainbus", *args], capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"trainbus {args[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    args = bench_parser(__doc__, "100,000 steps instead of 1,000,000").parse_args()
    mode = bench_mode(args.quick)
    steps = STEPS[mode]
    per_million = 1_000_000 / steps
    with tempfile.TemporaryDirectory(prefix="trainbus-journal-") as tmp:
        run_dir, events, write_s = _write_run(Path(tmp), steps)
        journal = run_dir.journal_path
        segments = len(list(journal.iterdir()))
        plain = _disk_bytes(journal)
        started = time.perf_counter()
        compact_segments(journal, events - 1, JournalSettings(), closed_at=events - 1)
        compress_s = time.perf_counter() - started
        compressed = _disk_bytes(journal)
        show_s, show_cpu_s = _cli("show", str(run_dir.path))
        plot_s, plot_cpu_s = _cli("plot", str(run_dir.path), "-o", str(Path(tmp) / "curves.png"))
    plain_mb = plain / MB * per_million
    compressed_mb = compressed / MB * per_million
    rows = [
        {"figure": "steps", "value": steps},
        {"figure": "events", "value": events},
        {"figure": "events per step", "value": round(events / steps, 2)},
        {"figure": "segments", "value": segments},
        {"figure": "plain bytes per event", "value": round(plain / events, 1)},
        {"figure": "plain bytes per step", "value": round(plain / steps, 1)},
        {"figure": "compressed bytes per step", "value": round(compressed / steps, 1)},
        {"figure": "compression ratio", "value": round(plain / compressed, 2)},
        {"figure": "journal write s (encode + append)", "value": round(write_s, 2)},
        {"figure": "compression s (one thread)", "value": round(compress_s, 2)},
        {"figure": "trainbus show s (wall)", "value": round(show_s, 2)},
        {"figure": "trainbus show s (CPU)", "value": round(show_cpu_s, 2)},
        {"figure": "trainbus plot s (wall)", "value": round(plot_s, 2)},
        {"figure": "trainbus plot s (CPU)", "value": round(plot_cpu_s, 2)},
    ]
    print(format_table(rows, ["figure", "value"]))
    scale = "" if steps == 1_000_000 else f" (measured over {steps:,} steps, scaled)"
    headline = [
        Headline(
            f"journal on disk per 1,000,000 steps, compressed{scale}",
            round(compressed_mb, 1),
            "MB",
            f"<= {TARGET_MB_PER_MILLION:g} MB",
            compressed_mb <= TARGET_MB_PER_MILLION,
        ),
        Headline(f"journal on disk per 1,000,000 steps, plain{scale}", round(plain_mb, 1), "MB"),
        Headline("journal bytes per event, plain", round(plain / events, 1), "B"),
        Headline(
            f"trainbus show over a {steps:,}-step journal",
            round(show_s, 2),
            "s",
            f"<= {TARGET_SHOW_S:g} s",
            show_s <= TARGET_SHOW_S if steps == 1_000_000 else None,
        ),
        Headline(f"trainbus plot over a {steps:,}-step journal", round(plot_s, 2), "s"),
    ]
    write_result("journal", quick=mode != "full", headline=headline, tables={"journal": rows})


if __name__ == "__main__":
    main()
