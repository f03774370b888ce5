"""Every integration's SDK sink, offline, at ``logging_steps=1``: what it costs training.

The trainbus ``Trainer`` trains the shared workload (``_common.Workload``) with one ``report_to``
integration at a time, each in its SDK's own offline or local mode as a user would set it up
without a server (the environment in ``OFFLINE_ENV``), in alternating rounds with a run that
reports nowhere. Reported per integration: steps/s over a fixed window after warm-up, its ratio to
no sink (the best run of each, and the median of the paired per-round ratios; target >= 0.97
where the SDK works inside the training process), the training process's own CPU time per step,
and the CPU time the processes the SDK starts (wandb-core, ClearML's reporter ...) took while
the run trained, which the training process's figures do not show. Every sink runs twice: where
it runs by default (the sink process for sinks whose SDK does per-point Python work,
``Sink.prefers_sink_process``; the training process for the others) — the >= 0.97 target is for
these rows — and at the other place (``TRAINBUS_SINK_PROCESS`` set to move it), reported beside
them. A sink in the sink process adds that process's CPU to the SDK processes' figure. Runs close
with a 30 s flush deadline and the time from the last step to ``train()`` returning is kept as
``flush_s``.

Flyte is left out: its sink runs only inside a Flyte task, whose local execution is a separate
process model. MLflow against a server 200 ms away is ``bench_sinks``' row.

Second part, **Comet online at +200 ms**: the Comet sink (the comet_ml SDK in the sink's worker
thread) against the local fake Comet server behind a proxy adding 200 ms to every request (no
Comet server runs here; the fake checks each request against the SDK's own message classes), at
``logging_steps=1`` for ``COMET_SECONDS`` of training, closing with the default 30 s flush
deadline: the losses the server holds when the last step ends, and once ``train()`` returned.

Run alone with ``python -m benchmarks.bench_integrations [--quick]``; writes
``results/integrations.json``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

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
from benchmarks._sink_stage import WARMUP_STEPS, quiet

NO_SINK: Final = "none"
IN_SINK_PROCESS: Final = " (sink process)"
"""Suffix of a contender moved to the sink child process (``TRAINBUS_SINK_PROCESS=1``)."""
IN_TRAINING_PROCESS: Final = " (training process)"
"""Suffix of a contender kept in the training process (``TRAINBUS_SINK_PROCESS=0``)."""
COMET_SECONDS: Final = 10.0
"""Training time of each Comet-online run: long enough that the SDK's ~2 s start is a part."""
FLUSH_DEADLINE_S: Final = 30.0
"""The orchestrator's default flush deadline (``Orchestrator(flush_timeout=...)``)."""


def _offline_env(root: Path) -> dict[str, Callable[[Path], dict[str, str]]]:
    """Per integration, the environment of an offline run writing under ``run``."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    return {
        "tensorboard": lambda run: {"TENSORBOARD_LOGGING_DIR": str(run / "tb")},
        "mlflow": lambda run: {
            "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlflow.db'}",
            "MLFLOW_EXPERIMENT_NAME": "bench-integrations",
        },
        "comet_ml": lambda run: {
            "COMET_START_ONLINE": "0",
            "COMET_OFFLINE_DIRECTORY": str(run / "comet"),
            "COMET_PROJECT_NAME": "bench-integrations",
        },
        "wandb": lambda run: {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(run),
            "WANDB_SILENT": "true",
            "WANDB_PROJECT": "bench-integrations",
        },
        "dvclive": lambda run: {},
        "clearml": lambda run: {
            "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_CACHE_DIR": str(run / "clearml"),
            "HOME": str(home),
        },
        "swanlab": lambda run: {
            "SWANLAB_MODE": "offline",
            "SWANLAB_LOG_DIR": str(run / "swanlog"),
            "SWANLAB_PROJECT": "bench-integrations",
        },
        "codecarbon": lambda run: {
            "CODECARBON_COUNTRY_ISO_CODE": "FRA",
            "CODECARBON_OUTPUT_DIR": str(run),
            "CODECARBON_LOG_LEVEL": "error",
        },
        "azure_ml": lambda run: {},
    }


def _placement(name: str) -> bool | None:
    """``Orchestrator(sink_process=)`` for a contender: forced by its suffix, else the default."""
    if name.endswith(IN_SINK_PROCESS):
        return True
    if name.endswith(IN_TRAINING_PROCESS):
        return False
    return None


def _integration(name: str) -> str:
    return name.removesuffix(IN_SINK_PROCESS).removesuffix(IN_TRAINING_PROCESS)


def _moved_contender(name: str, env: Mapping[str, str], root: Path) -> str:
    """The contender that runs ``name`` at the place it does not choose by default."""
    from trainbus.orchestrator.registry import build_sinks

    [(_, sink)] = build_sinks([name], env, run_dir=root / "probe", run_name="probe")
    return name + (IN_TRAINING_PROCESS if sink.prefers_sink_process else IN_SINK_PROCESS)


def _child_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of every live descendant process (the sink process, the
    SDKs' helpers), by pid."""
    import psutil

    seconds = {}
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        seconds[child.pid] = times.user + times.system
    return seconds


def _cpu_between(start: Mapping[int, float], end: Mapping[int, float]) -> float:
    """CPU seconds the descendants alive at ``end`` spent since ``start`` (one started since
    counts from zero)."""
    return sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items())


def _train(
    root: Path, name: str, env_for: Mapping[str, Callable[[Path], dict[str, str]]], seconds: float
) -> dict[str, Any]:
    import torch

    integration = _integration(name)

    from benchmarks._contenders import BatchList, Classifier, unwrap
    from trainbus.orchestrator.run import Orchestrator
    from trainbus.trainer import PrinterCallback, Trainer, TrainerCallback

    work = Workload()
    run = root / f"run-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    stamps: list[float] = []
    cpu: list[float] = []
    child_cpu: list[dict[int, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if len(stamps) == WARMUP_STEPS:
                child_cpu.append(_child_cpu_s())
            if len(stamps) > WARMUP_STEPS and stamps[-1] - stamps[WARMUP_STEPS] >= seconds:
                control.should_training_stop = True
                child_cpu.append(_child_cpu_s())

    args = bench_args(
        work,
        run / "out",
        max_steps=10_000_000,
        report_to="none" if name == NO_SINK else [integration],
        run_name="bench-integrations",
    )
    torch.set_num_threads(work.threads)
    trainer = Trainer(
        Classifier(work),
        args,
        data_collator=unwrap,
        train_dataset=BatchList(work),
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    env = {} if name == NO_SINK else env_for[integration](run)
    _with_env(
        env,
        lambda: trainer.train(
            launcher=Orchestrator.for_trainer(
                trainer, flush_timeout=30.0, sink_process=_placement(name)
            )
        ),
    )
    returned = time.perf_counter()
    wait_for_sink_processes()
    timed = stamps[WARMUP_STEPS:]
    window = timed[-1] - timed[0]
    return {
        "contender": name,
        "steps": len(stamps),
        "steps_per_s": (len(timed) - 1) / window,
        "train_process_cpu_us_per_step": 1e6 * (cpu[-1] - cpu[WARMUP_STEPS]) / (len(timed) - 1),
        "sdk_process_cpu_pct": 100 * _cpu_between(child_cpu[0], child_cpu[-1]) / window,
        "flush_s": returned - stamps[-1],
    }


def _summary(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per integration: medians, and ratios to no sink (best runs; paired per round)."""
    base = {r["round"]: r for r in runs if r["contender"] == NO_SINK}
    best_base = max(r["steps_per_s"] for r in base.values())
    rows = []
    for name in names:
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
                "sdk_process_cpu_pct": median([r["sdk_process_cpu_pct"] for r in mine]),
                "flush_s": median([r["flush_s"] for r in mine]),
                "runs": len(mine),
            }
        )
    return rows


def _headline(row: Mapping[str, Any], base: Mapping[str, Any], rounds: int) -> Headline:
    name = row["contender"]
    target = _placement(name) is None  # the target is for the place a sink runs by default
    where = f"{name} by default ({row['placement']})" if target else name
    value = row["best_ratio_to_no_sink"]
    return Headline(
        f"steps/s with {where} offline at logging_steps=1, relative to no sink, "
        f"best of {rounds} runs each",
        value,
        "x",
        ">= 0.97" if target else "-",
        value >= 0.97 if target else None,
        note=f"median of the paired per-round ratios {row['paired_ratio_to_no_sink']:.3f}; "
        f"training process CPU {row['train_process_cpu_us_per_step']:.0f} us/step (no sink "
        f"{base['train_process_cpu_us_per_step']:.0f}); the SDK's own processes "
        f"{row['sdk_process_cpu_pct']:.1f} % of a core; flush {row['flush_s']:.2f} s",
    )


def _comet_online(root: Path, runs: int, smoke: bool) -> list[dict[str, Any]]:
    """Comet through the fake server at +200 ms: points held at the last step and at the end."""
    from benchmarks._sink_stage import Stage
    from benchmarks.bench_sinks import train_with_sinks

    seconds = 1.0 if smoke else COMET_SECONDS
    rows = []
    with Stage(root / "stage") as stage:
        for _ in range(runs):
            row = train_with_sinks(stage, ("comet",), seconds, close_deadline=FLUSH_DEADLINE_S)
            rows.append(
                {
                    key: row.get(key)
                    for key in (
                        "steps",
                        "steps_per_s",
                        "comet_during_run",
                        "comet_delivered",
                        "comet_exactly_once",
                        "flush_s",
                        "left_in_journal",
                    )
                }
            )
            print(format_table([rows[-1]]), flush=True)
    return rows


def _fraction(text: str | None) -> float:
    done, _, total = (text or "0/1").partition("/")
    return int(done) / max(1, int(total))


def _comet_headlines(rows: Sequence[Mapping[str, Any]]) -> list[Headline]:
    during = median([_fraction(r["comet_during_run"]) for r in rows])
    complete = all(_fraction(r["comet_delivered"]) == 1.0 and r["comet_exactly_once"] for r in rows)
    worst_flush = max(r["flush_s"] for r in rows)
    return [
        Headline(
            "Comet online at +200 ms, logging_steps=1: losses on the server when the last step "
            "ended / logged",
            during,
            "x",
            "-",
            None,
            note=f"median of {len(rows)} runs of {COMET_SECONDS:.0f} s: "
            + ", ".join(str(r["comet_during_run"]) for r in rows),
        ),
        Headline(
            "Comet online at +200 ms: every logged loss on the server, exactly once, within the "
            "flush deadline",
            float(complete),
            "yes=1",
            "1",
            complete,
            note=f"slowest flush {worst_flush:.1f} s of the {FLUSH_DEADLINE_S:.0f} s deadline; "
            + ", ".join(str(r["comet_delivered"]) for r in rows),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    options = bench_parser(__doc__, "short runs, one round").parse_args(argv)
    smoke = bench_mode(options.quick) == "smoke"
    seconds = 0.5 if smoke else 2.0 if options.quick else 3.0
    rounds = 1 if options.quick or smoke else 5  # a 3 % target needs the noise of 5 rounds
    with tempfile.TemporaryDirectory(prefix="bench-integrations-") as tmp, quiet():
        root = Path(tmp)
        env_for = _offline_env(root)
        from trainbus.orchestrator.registry import INTEGRATIONS

        names = [
            name
            for name in env_for
            if INTEGRATIONS.get(name) is not None
            and importlib.util.find_spec(str(INTEGRATIONS[name]).partition(":")[0]) is not None
        ]
        _train(root, NO_SINK, env_for, 1.0)  # pay torch's first-step costs untimed
        runs: list[dict[str, Any]] = []
        # Every sink also at the place it does not choose, for the comparison.
        moved = [_moved_contender(name, env_for[name](root), root) for name in names]
        placement = {
            name: "training process" if other.endswith(IN_SINK_PROCESS) else "sink process"
            for name, other in zip(names, moved, strict=True)
        }
        group = [NO_SINK, *names, *moved]
        for index, name in enumerate(abab_order(group, rounds)):
            runs.append(_train(root, name, env_for, seconds))
            runs[-1]["round"] = index // len(group)
            print(format_table([runs[-1]]), flush=True)
        comet_runs = _comet_online(root, 1 if options.quick or smoke else 3, smoke)
    table = _summary(runs, group)
    for row in table:
        row["placement"] = placement.get(row["contender"], "-")
    print(format_table(table))
    print(format_table(comet_runs))
    headline = [_headline(row, table[0], rounds) for row in table[1:]]
    headline += _comet_headlines(comet_runs)
    path = write_result(
        "integrations",
        quick=options.quick,
        headline=headline,
        tables={"integrations": table, "runs": runs, "comet_online": comet_runs},
        extra={
            "workload": Workload().describe(),
            "seconds": seconds,
            "rounds": rounds,
            "pid": os.getpid(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
