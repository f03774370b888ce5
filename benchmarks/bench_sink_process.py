"""Sinks in the training process or in a process of their own (``TRAINBUS_SINK_PROCESS=1``).

The trainbus ``Trainer`` trains the shared workload (``_common.Workload``) at ``logging_steps=1``,
reporting through ``report_to`` and the integrations' environment variables, as a user starts it;
MLflow (a real local ``mlflow server``) and Comet online (the local REST fake from the tests) are
behind ``tests.support.fault_proxy.FaultProxy`` adding 200 ms to every request. Two loads, each a
group of contenders run back to back in alternating rounds:

* **stress**: 200 extra scalars in every log entry through TensorBoard, MLflow and Comet at once
  (``bench_peers``' stress condition, with runs long enough to measure): no sink, the three sinks
  on the bus's loop in the training process (the default), and the same in a child process;
* **standard**: the Trainer's own log entry, one remote sink at a time (the slow-sink target's
  condition), in the training process and in a child process.

Reported per contender: steps/s over a fixed window after warm-up, its ratio to no sink in the
same group (the best run of each, and the median of the per-round ratios), and the training
process's own CPU time per step (``process_time``: the sink process's CPU is not in it). Runs close
with a 2 s flush deadline; what is not delivered by then stays in the journal (not measured here).

Run alone with ``python -m benchmarks.bench_sink_process [--quick]``; writes
``results/sink_process.json``.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Headline,
    Workload,
    abab_order,
    bench_args,
    bench_mode,
    bench_parser,
    format_table,
    median,
    wait_for_sink_processes,
    write_result,
)
from benchmarks._contenders import _with_env
from benchmarks._sink_stage import WARMUP_STEPS, Stage, quiet
from benchmarks._trainbus_runs import scalar_trainer

STRESS_SCALARS = 200


@dataclass(frozen=True)
class Contender:
    """One way to train: which ``report_to`` sinks, where they run, how much each log holds."""

    name: str
    sinks: tuple[str, ...]
    sink_process: bool
    scalars: int


ALL_THREE = ("tensorboard", "mlflow", "comet_ml")
STRESS = (
    Contender("no sink", (), False, STRESS_SCALARS),
    Contender("3 sinks, in process", ALL_THREE, False, STRESS_SCALARS),
    Contender("3 sinks, sink process", ALL_THREE, True, STRESS_SCALARS),
)
"""200 extra scalars per log through all three sinks: where a sink's Python costs the most."""
STANDARD = (
    Contender("no sink", (), False, 0),
    Contender("mlflow, in process", ("mlflow",), False, 0),
    Contender("mlflow, sink process", ("mlflow",), True, 0),
    Contender("comet_ml, in process", ("comet_ml",), False, 0),
    Contender("comet_ml, sink process", ("comet_ml",), True, 0),
)
"""The Trainer's own log entry, one remote sink at a time: the slow-sink target's condition."""


def _train(stage: Stage, contender: Contender, seconds: float) -> dict[str, Any]:
    import torch

    from benchmarks._contenders import BatchList, Classifier, unwrap
    from trainbus.orchestrator.run import Orchestrator
    from trainbus.trainer import PrinterCallback, TrainerCallback

    work = Workload()
    root = stage.root / f"run-{uuid.uuid4().hex[:8]}"
    stamps: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if len(stamps) > WARMUP_STEPS and stamps[-1] - stamps[WARMUP_STEPS] >= seconds:
                control.should_training_stop = True

    sinks = list(contender.sinks)
    env = {
        "TENSORBOARD_LOGGING_DIR": str(root / "tb"),
        "MLFLOW_TRACKING_URI": stage.mlflow_proxy.url,
        "MLFLOW_EXPERIMENT_NAME": "bench-sink-process",
        "COMET_API_KEY": stage.comet_key,
        "COMET_URL_OVERRIDE": stage.comet_proxy.url,
        "COMET_WORKSPACE": "bench",
    }
    args = bench_args(
        work,
        root / "out",
        max_steps=10_000_000,
        report_to=sinks or "none",
        run_name="bench-sink-process",
    )
    torch.set_num_threads(work.threads)
    trainer = scalar_trainer(contender.scalars)(
        Classifier(work),
        args,
        data_collator=unwrap,
        train_dataset=BatchList(work),
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    # The integrations read their settings from the environment, as a user's shell sets them.
    _with_env(
        env,
        lambda: trainer.train(
            launcher=Orchestrator.for_trainer(
                trainer, flush_timeout=2.0, sink_process=contender.sink_process
            )
        ),
    )
    wait_for_sink_processes()
    timed = stamps[WARMUP_STEPS:]
    return {
        "contender": contender.name,
        "scalars": contender.scalars,
        "steps": len(stamps),
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "train_process_cpu_us_per_step": 1e6 * (cpu[-1] - cpu[WARMUP_STEPS]) / (len(timed) - 1),
    }


def _summary(runs: Sequence[dict[str, Any]], group: Sequence[Contender]) -> list[dict[str, Any]]:
    """Per contender of one load: medians, and ratios to no sink (best runs; paired per round)."""
    base = {r["round"]: r for r in runs if r["contender"] == "no sink"}
    best_base = max(r["steps_per_s"] for r in base.values())
    rows = []
    for contender in group:
        mine = [r for r in runs if r["contender"] == contender.name]
        rows.append(
            {
                "contender": contender.name,
                "scalars": contender.scalars,
                "steps_per_s": median([r["steps_per_s"] for r in mine]),
                "best_ratio_to_no_sink": max(r["steps_per_s"] for r in mine) / best_base,
                "paired_ratio_to_no_sink": median(
                    [r["steps_per_s"] / base[r["round"]]["steps_per_s"] for r in mine]
                ),
                "train_process_cpu_us_per_step": median(
                    [r["train_process_cpu_us_per_step"] for r in mine]
                ),
                "runs": len(mine),
            }
        )
    return rows


def _measure(
    stage: Stage, group: Sequence[Contender], seconds: float, rounds: int
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for index, contender in enumerate(abab_order(list(group), rounds)):
        runs.append(_train(stage, contender, seconds))
        runs[-1]["round"] = index // len(group)
        print(format_table([runs[-1]]), flush=True)
    return runs


def _headline(row: dict[str, Any], base: dict[str, Any], what: str, target: bool) -> Headline:
    value = row["best_ratio_to_no_sink"]
    return Headline(
        what,
        value,
        "x",
        ">= 0.97" if target else "-",
        value >= 0.97 if target else None,
        note=f"median of the paired per-round ratios {row['paired_ratio_to_no_sink']:.3f}; "
        f"training process CPU {row['train_process_cpu_us_per_step']:.0f} us/step (no sink "
        f"{base['train_process_cpu_us_per_step']:.0f})",
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = bench_parser(__doc__, "short runs, one round").parse_args(argv)
    smoke = bench_mode(options.quick) == "smoke"
    seconds = 0.5 if smoke else 2.0 if options.quick else 3.0
    rounds = 1 if options.quick or smoke else 4
    with (
        tempfile.TemporaryDirectory(prefix="bench-sink-process-") as tmp,
        quiet(),
        Stage(Path(tmp)) as stage,
    ):
        _train(stage, STANDARD[0], 1.0)  # pay torch's first-step costs untimed
        stress_runs = _measure(stage, STRESS, seconds, rounds)
        standard_runs = _measure(stage, STANDARD, seconds, rounds)
    stress = _summary(stress_runs, STRESS)
    standard = _summary(standard_runs, STANDARD)
    print(format_table(stress))
    print(format_table(standard))
    best = f"best of {rounds} runs each"
    headline = [
        _headline(
            row,
            stress[0],
            f"stress ({STRESS_SCALARS} scalars per log, 3 sinks at +200 ms), {row['contender']}: "
            f"steps/s vs no sink, {best}",
            target=False,
        )
        for row in stress[1:]
    ]
    # The slow-sink target, taken here for the sink process (bench_sinks takes it in process).
    headline += [
        _headline(
            row,
            standard[0],
            f"steps/s with {row['contender'].split(',')[0]} in a sink process "
            f"(TRAINBUS_SINK_PROCESS=1) at +200 ms, relative to no sink, {best}",
            target=True,
        )
        for row in standard[1:]
        if row["contender"].endswith("sink process")
    ]
    path = write_result(
        "sink_process",
        quick=options.quick,
        headline=headline,
        tables={
            "stress": stress,
            "standard": standard,
            "runs": [*stress_runs, *standard_runs],
        },
        extra={"workload": Workload().describe(), "seconds": seconds, "rounds": rounds},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
