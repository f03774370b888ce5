"""Sinks in the training process or in a process of their own, under a heavy log load.

The trainbus ``Trainer`` trains the shared workload (``_common.Workload``) at ``logging_steps=1``
with 200 extra scalars in every log entry, reporting to TensorBoard, MLflow and Comet (online),
the remote two behind ``sinks.testing.FaultProxy`` adding 200 ms to every request (MLflow: a real
local ``mlflow server``; Comet: the local REST fake from the tests) — the stress condition of
``bench_peers``, here with runs long enough to measure. Three contenders run back to back in
alternating rounds: no sink, the three sinks on the bus's loop in the training process (the
default), and the same sinks in a child process (``TRAINBUS_SINK_PROCESS=1``). Every contender
is started as a user starts it: ``report_to`` and the integrations' environment variables.

Reported per contender: steps/s over a fixed window after warm-up, its ratio to no sink (the best
run of each, and the median of the per-round ratios), and the training process's own CPU time per
step (``process_time``: the sink process's CPU is not in it). The runs close with a 2 s flush
deadline; what the sinks have not delivered by then stays in the journal (not measured here).

Run alone with ``python -m benchmarks.bench_sink_process [--quick]``; writes
``results/sink_process.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Headline, Workload, abab_order, format_table, median, write_result
from benchmarks._contenders import _with_env
from benchmarks._trainbus_runs import scalar_trainer
from benchmarks.bench_sinks import WARMUP_STEPS, Stage, _quiet

SCALARS = 200
CONTENDERS = ("no sink", "in process", "sink process")


def _train(stage: Stage, contender: str, seconds: float) -> dict[str, Any]:
    import torch

    from benchmarks._contenders import BatchList, Classifier, unwrap
    from orchestrator.run import Orchestrator
    from trainer import PrinterCallback, TrainerCallback, TrainingArguments

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

    sinks = [] if contender == "no sink" else ["tensorboard", "mlflow", "comet_ml"]
    env = {
        "TENSORBOARD_LOGGING_DIR": str(root / "tb"),
        "MLFLOW_TRACKING_URI": stage.mlflow_proxy.url,
        "MLFLOW_EXPERIMENT_NAME": "bench-sink-process",
        "COMET_API_KEY": stage.comet_key,
        "COMET_URL_OVERRIDE": stage.comet_proxy.url,
        "COMET_WORKSPACE": "bench",
    }
    args = TrainingArguments(
        output_dir=str(root / "out"),
        max_steps=10_000_000,
        per_device_train_batch_size=1,
        learning_rate=work.learning_rate,
        max_grad_norm=work.max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        report_to=sinks or "none",
        disable_tqdm=True,
        use_cpu=True,
        seed=work.seed,
        run_name="bench-sink-process",
    )
    torch.set_num_threads(work.threads)
    trainer = scalar_trainer(SCALARS)(
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
        lambda: Orchestrator.for_trainer(
            trainer, flush_timeout=2.0, sink_process=contender == "sink process"
        ).run_blocking(lambda _bus: trainer.train()),
    )
    timed = stamps[WARMUP_STEPS:]
    return {
        "contender": contender,
        "steps": len(stamps),
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "train_process_cpu_us_per_step": 1e6 * (cpu[-1] - cpu[WARMUP_STEPS]) / (len(timed) - 1),
    }


def _summary(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {r["round"]: r for r in runs if r["contender"] == "no sink"}
    best_base = max(r["steps_per_s"] for r in base.values())
    rows = []
    for name in CONTENDERS:
        mine = [r for r in runs if r["contender"] == name]
        rows.append(
            {
                "contender": name,
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    options = parser.parse_args(argv)
    smoke = os.environ.get("TRAINBUS_BENCH_SMOKE") == "1"
    seconds = 0.5 if smoke else 2.0 if options.quick else 3.0
    rounds = 1 if options.quick or smoke else 4
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-sink-process-") as tmp,
        _quiet(),
        Stage(Path(tmp)) as stage,
    ):
        _train(stage, "no sink", 1.0)  # pay torch's first-step costs untimed
        for index, name in enumerate(abab_order(list(CONTENDERS), rounds)):
            runs.append(_train(stage, name, seconds))
            runs[-1]["round"] = index // len(CONTENDERS)
            print(format_table([runs[-1]]), flush=True)
    table = _summary(runs)
    print(format_table(table))
    rows = {row["contender"]: row for row in table}
    best = f"best of {rounds} runs each"
    headline = [
        Headline(
            f"stress ({SCALARS} scalars per log, 3 sinks at +200 ms), sinks {where}: steps/s vs "
            f"no sink, {best}",
            rows[name]["best_ratio_to_no_sink"],
            "x",
            "-",
            None,
            note=f"median of the paired per-round ratios "
            f"{rows[name]['paired_ratio_to_no_sink']:.3f}; training process CPU "
            f"{rows[name]['train_process_cpu_us_per_step']:.0f} us/step (no sink "
            f"{rows['no sink']['train_process_cpu_us_per_step']:.0f})",
        )
        for name, where in (
            ("in process", "in the training process"),
            ("sink process", "in a child process"),
        )
    ]
    path = write_result(
        "sink_process",
        quick=options.quick,
        headline=headline,
        tables={"contenders": table, "runs": runs},
        extra={"workload": Workload().describe(), "seconds": seconds, "rounds": rounds},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
