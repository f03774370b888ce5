"""transformers.Trainer kept, reporting to MLflow 200 ms away: its own callback or trainbus's.

The question a transformers user who will not switch trainers asks: if I add
``callbacks=[TrainbusCallback()]``, how much of my training speed do I keep while every step is
logged to a remote MLflow server, compared with transformers' own ``MLflowCallback``? Three
contenders train ``bench_hf``'s tiny BERT with ``transformers.Trainer`` and the same arguments,
logging every step:

* ``no callback``: ``report_to="none"`` (the reference);
* ``MLflowCallback``: ``report_to=["mlflow"]``, transformers' own callback as shipped (MLflow's
  asynchronous logging, which it turns on for mlflow >= 2.8);
* ``TrainbusCallback``: the same ``report_to=["mlflow"]`` plus ``TrainbusCallback()``, which
  removes transformers' callback and delivers through trainbus's MLflow sink (journal, batches,
  a loop thread of its own).

MLflow is a real ``mlflow server`` (SQLite) behind ``benchmarks._proxy``, a proxy in its own
process adding 200 ms to every request. Method (``bench_hf``'s): one untimed run of each
contender, then rounds that alternate their order (A B C, C B A, ...). Each run gives two figures:
steps per second end to end (``train()`` called to ``train()`` returned, the final flush and the
closing of the tracker run included) and by the step clock (steady time per step from the end of
step 10 to the end of the last, from a step-end callback). The headline is, for each callback,
the median over rounds of its steps/s over the no-callback run's in the same round, with the ratio
of best runs beside it; ``tail_ms`` is the time from the last step's end to ``train()`` returning.

Every point is checked before a figure is written: MLflow, read back with ``MlflowClient``, must
hold each logged ``loss`` exactly once for the trainbus run (otherwise the benchmark names the
difference and exits with status 1); the count is reported for transformers' callback too.

Run: ``python -m benchmarks.bench_bridge [--quick]``; writes ``benchmarks/results/bridge.json``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch

from benchmarks._common import (
    SKIPPED_EXIT,
    Headline,
    abab_order,
    bench_mode,
    bench_parser,
    format_table,
    median,
    wait_for_sink_processes,
    write_result,
)
from benchmarks.bench_hf import TinyBert
from benchmarks.bench_trainer import WARM_UP_STEPS, _silenced, _steady

# Importing transformers' integrations imports comet_ml, whose import hooks would patch mlflow and
# torch in this process (and write Comet archives into the working directory) for every contender.
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")

LATENCY_S: Final = 0.2
"""What the proxy adds to every request to MLflow."""
TARGET: Final = 0.97
"""TrainbusCallback's steps/s over no callback's, by the step clock."""
PLAN: Final = {"full": (400, 5), "quick": (50, 2), "smoke": (WARM_UP_STEPS + 5, 1)}
"""Optimizer steps per run and rounds, by mode."""

Name = Literal["none", "mlflow_callback", "trainbus_callback"]
CONTENDERS: Final[tuple[Name, ...]] = ("none", "mlflow_callback", "trainbus_callback")
LABELS: Final[dict[Name, str]] = {
    "none": "no callback",
    "mlflow_callback": "transformers' MLflowCallback",
    "trainbus_callback": "TrainbusCallback (MLflow sink)",
}


@dataclass(frozen=True)
class Run:
    """One ``train()``: end-to-end seconds, steady seconds per step, the tail after the last
    step, and the loss points logged and found in MLflow."""

    wall_s: float
    steady_s: float
    tail_s: float
    steps: int
    logged: tuple[int, ...]
    in_mlflow: tuple[int, ...] | None


@contextlib.contextmanager
def _mlflow_env(tracking_uri: str, experiment: str) -> Iterator[None]:
    """Point MLflow (transformers' callback and trainbus's sink alike) at ``experiment``."""
    values = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _train(name: Name, bert: TinyBert, steps: int, workdir: Path, uri: str) -> Run:
    """Train once as ``name`` and read its loss points back from MLflow."""
    import transformers

    from trainbus import TrainbusCallback

    step_ends: list[float] = []

    class StepClock(transformers.TrainerCallback):
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            step_ends.append(time.perf_counter())

    fields = bert.arguments(Path(tempfile.mkdtemp(dir=workdir)), steps, 1)
    fields["report_to"] = "none" if name == "none" else ["mlflow"]
    callbacks: list[Any] = [StepClock()]
    bridge = TrainbusCallback() if name == "trainbus_callback" else None
    if bridge is not None:
        callbacks.append(bridge)
    experiment = f"bench-bridge-{name}-{uuid.uuid4().hex[:8]}"
    with _mlflow_env(uri, experiment):
        trainer = transformers.Trainer(
            model=bert.model(),
            args=transformers.TrainingArguments(**fields),
            train_dataset=bert.dataset(),
            callbacks=callbacks,
        )
        began = time.perf_counter()
        trainer.train()
        ended = time.perf_counter()
    wait_for_sink_processes()
    logged = tuple(int(e["step"]) for e in trainer.state.log_history if "loss" in e)
    return Run(
        wall_s=ended - began,
        steady_s=_steady(step_ends),
        tail_s=ended - step_ends[-1],
        steps=len(step_ends),
        logged=logged,
        in_mlflow=None if name == "none" else _loss_steps(uri, experiment),
    )


def _loss_steps(uri: str, experiment: str) -> tuple[int, ...]:
    """Steps of every ``loss`` point of the experiment's runs, duplicates included."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return ()
    runs = client.search_runs([found.experiment_id])
    steps = [m.step for run in runs for m in client.get_metric_history(run.info.run_id, "loss")]
    return tuple(sorted(steps))


def _measure(
    bert: TinyBert, steps: int, rounds: int, workdir: Path, uri: str
) -> dict[Name, list[Run]]:
    with _silenced():  # warm-up: imports, the server's first requests, first-call costs
        for name in CONTENDERS:
            _train(name, bert, steps, workdir, uri)
    runs: dict[Name, list[Run]] = {}
    for name in abab_order(CONTENDERS, rounds):
        with _silenced():
            runs.setdefault(name, []).append(_train(name, bert, steps, workdir, uri))
    return runs


def _check(runs: dict[Name, list[Run]]) -> str | None:
    """Why a trainbus run's MLflow points are not every logged point exactly once, or None."""
    for index, run in enumerate(runs["trainbus_callback"]):
        if run.in_mlflow != tuple(sorted(run.logged)):
            return (
                f"round {index + 1}: MLflow holds {len(run.in_mlflow or ())} loss points, "
                f"{len(run.logged)} were logged"
            )
    return None


def _paired(runs: dict[Name, list[Run]], name: Name, figure: Literal["wall", "steady"]) -> float:
    """Median over rounds of ``name``'s steps/s over no callback's in the same round."""

    def seconds(run: Run) -> float:
        return run.wall_s if figure == "wall" else run.steady_s

    pairs = zip(runs["none"], runs[name], strict=True)
    return median([seconds(ref) / seconds(run) for ref, run in pairs])


def _best(runs: dict[Name, list[Run]], name: Name, figure: Literal["wall", "steady"]) -> float:
    def fastest(who: Name) -> float:
        return min(r.wall_s if figure == "wall" else r.steady_s for r in runs[who])

    return fastest("none") / fastest(name)


def _rows(runs: dict[Name, list[Run]], steps: int) -> list[dict[str, Any]]:
    return [
        {
            "contender": LABELS[name],
            "steps_per_s": steps / median([r.wall_s for r in values]),
            "steady_steps_per_s": 1 / median([r.steady_s for r in values]),
            "ratio_end_to_end": 1.0 if name == "none" else _paired(runs, name, "wall"),
            "ratio_step_clock": 1.0 if name == "none" else _paired(runs, name, "steady"),
            "tail_ms": 1000 * median([r.tail_s for r in values]),
            "loss_points_logged": len(values[0].logged),
            "loss_points_in_mlflow": None
            if values[0].in_mlflow is None
            else len(values[0].in_mlflow),
            "runs": len(values),
        }
        for name, values in runs.items()
    ]


def _headlines(runs: dict[Name, list[Run]], rounds: int) -> list[Headline]:
    base = (
        "transformers.Trainer steps/s with {who} / with no callback, tiny BERT logging every "
        f"step to MLflow +{LATENCY_S * 1000:.0f} ms"
    )
    out: list[Headline] = []
    for name in ("trainbus_callback", "mlflow_callback"):
        who = "TrainbusCallback" if name == "trainbus_callback" else "its own MLflowCallback"
        ours = name == "trainbus_callback"
        step_clock = _paired(runs, name, "steady")
        end_to_end = _paired(runs, name, "wall")
        out += [
            Headline(
                f"{base.format(who=who)}, step clock, median of {rounds} paired ratios",
                step_clock,
                "x",
                f">= {TARGET}" if ours else "-",
                step_clock >= TARGET if ours else None,
                f"best of {rounds} runs each: {_best(runs, name, 'steady'):.3f}"
                + ("; every loss point in MLflow exactly once (checked)" if ours else ""),
            ),
            Headline(
                f"{base.format(who=who)}, end to end, median of {rounds} paired ratios",
                end_to_end,
                "x",
                f">= {TARGET}" if ours else "-",
                end_to_end >= TARGET if ours else None,
                f"best of {rounds} runs each: {_best(runs, name, 'wall'):.3f}",
            ),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "fewer steps and rounds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per contender")
    options = parser.parse_args(argv)
    missing = [m for m in ("transformers", "mlflow") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"bench_bridge needs {', '.join(missing)}; skipped", file=sys.stderr)
        return SKIPPED_EXIT
    from benchmarks._proxy import LatencyProxy
    from tests.support.mlflow_server import MlflowServer

    mode = bench_mode(options.quick)
    steps = options.steps or PLAN[mode][0]
    rounds = options.rounds or PLAN[mode][1]
    bert = TinyBert()
    torch.set_num_threads(bert.threads)
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        server = MlflowServer(Path(tmp) / "mlflow")
        server.start()
        proxy = LatencyProxy(server.url, LATENCY_S).start()
        try:
            runs = _measure(bert, steps, rounds, Path(tmp), proxy.url)
        finally:
            proxy.stop()
            server.stop()
    if why := _check(runs):
        print(f"TrainbusCallback did not deliver every point once: {why}; no result written")
        return 1
    rows = _rows(runs, steps)
    headline = _headlines(runs, rounds)
    print(format_table(rows))
    print()
    print(
        format_table([{"figure": h.name, "value": h.value, "target": h.target} for h in headline])
    )
    path = write_result(
        "bridge",
        quick=mode != "full",
        headline=headline,
        tables={"bridge": rows},
        extra={
            "workload": bert.describe(),
            "steps": steps,
            "rounds": rounds,
            "latency_s": LATENCY_S,
            "raw_seconds": {
                name: [[r.wall_s, r.steady_s, r.tail_s] for r in values]
                for name, values in runs.items()
            },
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
