"""Chaos: training runs under random tracker faults and kills lose, repeat and stall nothing.

Each run is the real ``trainbus train`` CLI on the tiny regression model (150 steps, 10 ms of
simulated compute per step, a log entry every step) reporting to a real local ``mlflow server``
behind ``tests.support.fault_proxy.FaultProxy``, to TensorBoard and to a user sink
(``examples.custom_sink:JsonLines``). A seed per run draws one to three faults at random steps
(tracker outage: connections dropped for 1.5-3 s; 5xx: the next 1-5 requests get 500/502/503;
429 with ``Retry-After`` 1.5-3 s; latency: 1.5-3 s per request over a stretch of steps) and how
the run ends (runs to the end, SIGKILL or SIGTERM at a random step; ``--no-sigterm`` leaves
SIGTERM out). Then ``trainbus sync`` runs against the server directly, and every numeric point
of every journal ``Log`` event is looked up, key and step, in MLflow's own metric history, in
TensorBoard's scalars (TensorBoard's ``EventAccumulator``) and in the user sink's lines
(``tests/support/chaos.py``).

Figures: points lost and duplicated (summed over runs and destinations; target 0), stalled
steps (a step that ended more than 1 s after the previous one, from the journal's ``StepEnd``
times; every fault lasts longer, and the no-fault run's largest gap is reported beside it; target
0), the number of runs and of faults injected (planned faults, and requests the proxy refused or
dropped). SIGTERM runs also report whether the process stopped gracefully (exit 143, ``run.json``
and MLflow marked killed). Every failing run is printed with its seed; ``make_plan(seed,
steps=150)`` in ``tests/support/chaos.py`` reproduces it.

Run alone with ``python -m benchmarks.bench_chaos [--quick] [--no-sigterm]``; writes
``results/chaos.json``.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks._common import Headline, bench_mode, bench_parser, format_table, write_result
from tests.support.chaos import ChaosOutcome, End, make_plan, run_plan, total
from tests.support.mlflow_server import MlflowServer

STEPS: Final = 150
STALL_S: Final = 1.0
RUNS: Final = {"full": 50, "quick": 8, "smoke": 2}
COLUMNS: Final = (
    "seed",
    "end",
    "faults",
    "exit",
    "sync_exit",
    "run_status",
    "mlflow_status",
    "points",
    "lost",
    "duplicated",
    "max_gap_ms",
    "stalled",
    "requests_faulted",
    "ok",
)


def _row(outcome: ChaosOutcome) -> dict[str, Any]:
    plan = outcome.plan
    return {
        "seed": plan.seed,
        "end": plan.end if plan.end == "complete" else f"{plan.end}@{plan.end_step}",
        "faults": "; ".join(f.describe() for f in plan.faults) or "-",
        "exit": outcome.exit_code,
        "sync_exit": outcome.sync_exit_code,
        "run_status": outcome.run_status,
        "mlflow_status": outcome.mlflow_status,
        "points": outcome.journal_points,
        "lost": sum(outcome.lost.values()),
        "duplicated": sum(outcome.duplicated.values()),
        "lost_by_sink": dict(outcome.lost),
        "duplicated_by_sink": dict(outcome.duplicated),
        "max_gap_ms": round(outcome.max_step_gap_s * 1000, 1),
        "stalled": outcome.stalled_steps,
        "requests_faulted": outcome.faults_injected,
        "ok": outcome.ok,
        "errors": outcome.errors,
    }


def _graceful(outcome: ChaosOutcome) -> bool:
    """Whether a SIGTERM run stopped as graceful stop promises."""
    return (
        outcome.exit_code == 143
        and outcome.run_status == "killed"
        and outcome.mlflow_status == "KILLED"
    )


def _headline(
    outcomes: Sequence[ChaosOutcome], baseline: ChaosOutcome, seconds: float
) -> list[Headline]:
    lost = total(o.lost for o in outcomes)
    duplicated = total(o.duplicated for o in outcomes)
    stalled = sum(o.stalled_steps for o in outcomes)
    points = sum(o.journal_points for o in outcomes)
    planned = sum(len(o.plan.faults) for o in outcomes)
    kills = sum(1 for o in outcomes if o.plan.end != "complete")
    sigterm = [o for o in outcomes if o.plan.end == "sigterm"]
    heads = [
        Headline("chaos: points lost", lost, "points", "0", lost == 0, f"of {points} per sink"),
        Headline("chaos: points duplicated", duplicated, "points", "0", duplicated == 0),
        Headline(
            "chaos: stalled steps",
            stalled,
            "steps",
            "0",
            stalled == 0,
            f"a step ending > {STALL_S:.0f} s after the previous one; largest gap "
            f"{max(o.max_step_gap_s for o in outcomes) * 1000:.0f} ms under faults, "
            f"{baseline.max_step_gap_s * 1000:.0f} ms without",
        ),
        Headline("chaos: runs", len(outcomes), "runs", note=f"{kills} killed mid-run"),
        Headline(
            "chaos: faults injected",
            planned,
            "faults",
            note=f"{sum(o.faults_injected for o in outcomes)} requests refused or dropped",
        ),
        Headline("chaos: runs failed", sum(not o.ok for o in outcomes), "runs", "0"),
    ]
    if sigterm:
        graceful = sum(_graceful(o) for o in sigterm)
        heads.append(
            Headline(
                "chaos: SIGTERM runs stopped gracefully",
                graceful,
                f"of {len(sigterm)} runs",
                f"{len(sigterm)}",
                graceful == len(sigterm),
                "exit 143, run.json and MLflow marked killed",
            )
        )
    heads.append(Headline("chaos: wall time", seconds, "s"))
    return heads


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, f"{RUNS['quick']} runs instead of {RUNS['full']}")
    parser.add_argument("--runs", type=int, help="how many runs (overrides the mode's count)")
    parser.add_argument("--seed", type=int, default=1000, help="the first run's seed")
    parser.add_argument(
        "--no-sigterm", action="store_true", help="end no run with SIGTERM (only SIGKILL and clean)"
    )
    options = parser.parse_args(argv)
    mode = bench_mode(options.quick)
    runs = options.runs or RUNS[mode]
    ends: tuple[End, ...] = ("complete", "sigkill", "sigterm")
    if options.no_sigterm:
        ends = ("complete", "sigkill")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        root = Path(tmp)
        with MlflowServer(root / "mlflow") as server:
            calm = make_plan(options.seed - 1, steps=STEPS, ends=("complete",), faults=(0, 0))
            baseline = run_plan(calm, root / "baseline", server.url, stall_s=STALL_S)
            print(f"baseline (no faults): {baseline.summary()}", flush=True)
            outcomes = []
            for index in range(runs):
                plan = make_plan(options.seed + index, steps=STEPS, ends=ends)
                print(f"[{index + 1}/{runs}] {plan.describe()}", flush=True)
                outcome = run_plan(plan, root / f"run-{plan.seed}", server.url, stall_s=STALL_S)
                outcomes.append(outcome)
                print(("  ok" if outcome.ok else "  FAILED: " + outcome.summary()), flush=True)
    seconds = time.perf_counter() - began
    rows = [_row(o) for o in outcomes]
    kinds = Counter(f.kind for o in outcomes for f in o.plan.faults)
    ends_count = Counter(o.plan.end for o in outcomes)
    print(format_table(rows, COLUMNS))
    heads = _headline(outcomes, baseline, seconds)
    print(format_table([{"figure": h.name, "value": h.value, "unit": h.unit} for h in heads]))
    failures = [o.summary() for o in outcomes if not o.ok]
    for line in failures:
        print("FAILED", line)
    write_result(
        "chaos",
        quick=mode != "full",
        headline=heads,
        tables={
            "runs": rows,
            "faults": [{"kind": k, "injected": n} for k, n in sorted(kinds.items())],
            "ends": [{"end": k, "runs": n} for k, n in sorted(ends_count.items())],
        },
        extra={
            "first_seed": options.seed,
            "steps_per_run": STEPS,
            "stall_s": STALL_S,
            "sigterm": not options.no_sigterm,
            "baseline": _row(baseline),
            "failures": failures,
        },
    )


if __name__ == "__main__":
    main()
