"""How responsive a host application's event loop stays while trainbus trains inside it.

A "service" task ticks every 10 ms on the loop while ``Orchestrator.train`` trains the digits MLP
of ``examples/digits.py`` (TensorBoard sink and journal on, evaluation every 100 steps) in a
worker thread. The lag of a tick is how much later than 10 ms it woke up; we report its median,
p99 and maximum, on asyncio and on trio, each run next to the same loop idling for as long (the
machine's own noise). The headline is the median p99 over three runs (one with ``--quick``).

The first training in a process pays for torch's lazy imports (``torch._dynamo`` on the first
optimizer, DTensor on the first clipping) which hold the GIL for 100-300 ms; that *cold* run is
reported on its own row. ``orchestrator.warm_up()`` at service start-up moves that cost out of
the serving path; the *warm* rows are what a running service sees.

Run: ``python -m benchmarks.bench_embed [--quick]``; writes ``benchmarks/results/embed.json``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from benchmarks._common import (
    Headline,
    bench_parser,
    format_table,
    median,
    percentile,
    write_result,
)

TICK = 0.010
TARGET_P99_MS = 10.0


async def _ticker(lags: list[float]) -> None:
    last = time.perf_counter()
    while True:
        await anyio.sleep(TICK)
        now = time.perf_counter()
        lags.append(max(0.0, now - last - TICK))
        last = now


def _trainer(output_dir: Path, steps: int) -> Any:
    from examples import digits
    from trainbus.trainer._arguments import TrainingArguments
    from trainbus.trainer._trainer import Trainer

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=0.003,
        eval_strategy="steps",
        eval_steps=100,
        save_strategy="no",
        logging_steps=10,
        report_to=["tensorboard"],
        disable_tqdm=True,
    )
    return Trainer(
        model=digits.model(),
        args=args,
        train_dataset=digits.train_dataset(),
        eval_dataset=digits.eval_dataset(),
        compute_metrics=digits.compute_metrics(),
    )


async def _measure_training(output_dir: Path, steps: int) -> dict[str, Any]:
    from trainbus.orchestrator import Orchestrator

    trainer = _trainer(output_dir, steps)
    lags: list[float] = []
    started = time.perf_counter()
    async with (
        Orchestrator.for_trainer(trainer) as orch,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(_ticker, lags)
        await orch.train(trainer)
        tg.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    return {"lags": lags, "seconds": elapsed, "steps": trainer.state.global_step}


async def _measure_idle(seconds: float) -> dict[str, Any]:
    lags: list[float] = []
    with anyio.move_on_after(seconds):
        await _ticker(lags)
    return {"lags": lags, "seconds": seconds, "steps": 0}


def _row(case: str, backend: str, result: dict[str, Any]) -> dict[str, Any]:
    lags_ms = [lag * 1000 for lag in result["lags"]]
    return {
        "case": case,
        "backend": backend,
        "ticks": len(lags_ms),
        "lag_p50_ms": round(median(lags_ms), 2),
        "lag_p99_ms": round(percentile(lags_ms, 99), 2),
        "lag_max_ms": round(max(lags_ms, default=float("nan")), 2),
        "train_steps": result["steps"],
        "steps_per_s": round(result["steps"] / result["seconds"], 1) if result["steps"] else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, "fewer steps (a smoke run)")
    ns = parser.parse_args(argv)
    steps = 150 if ns.quick else 1000
    repeats = 1 if ns.quick else 3
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the loop, not a network, is under test

    from trainbus.orchestrator import warm_up

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trainbus-bench-embed-") as tmp:
        root = Path(tmp)
        cold = anyio.run(_measure_training, root / "cold", steps, backend="asyncio")
        rows.append(_row("training, cold process", "asyncio", cold))
        warm_up()
        for backend in ("asyncio", "trio"):
            for repeat in range(repeats):
                out = root / f"warm-{backend}-{repeat}"
                warm = anyio.run(_measure_training, out, steps, backend=backend)
                rows.append(_row("training, warm", backend, warm) | {"repeat": repeat + 1})
                idle = anyio.run(_measure_idle, min(warm["seconds"], 5.0), backend=backend)
                rows.append(_row("idle loop", backend, idle) | {"repeat": repeat + 1})

    headline = []
    for backend in ("asyncio", "trio"):
        p99s = [
            r["lag_p99_ms"]
            for r in rows
            if r["case"] == "training, warm" and r["backend"] == backend
        ]
        idle_p99s = [
            r["lag_p99_ms"] for r in rows if r["case"] == "idle loop" and r["backend"] == backend
        ]
        value = round(median(p99s), 2)
        headline.append(
            Headline(
                f"host loop lag p99 while training ({backend})",
                value,
                "ms",
                target=f"<= {TARGET_P99_MS:g} ms",
                met=value <= TARGET_P99_MS,
                note=(
                    f"median of {len(p99s)} runs; 10 ms ticker beside Orchestrator.train after "
                    f"warm_up(); the idle loop's own p99 was {median(idle_p99s):.2f} ms"
                ),
            )
        )
    headline.append(
        Headline(
            "host loop lag max, first training in a cold process",
            rows[0]["lag_max_ms"],
            "ms",
            note="torch's lazy imports; orchestrator.warm_up() at start-up avoids it",
        )
    )
    print(f"\nloop lag while training ({steps} steps of the digits MLP)\n{format_table(rows)}")
    print(f"\nheadline\n{format_table([h.__dict__ for h in headline])}")
    path = write_result(
        "embed",
        quick=ns.quick,
        headline=headline,
        tables={"loop_lag": rows},
        extra={"tick_ms": TICK * 1000, "steps": steps, "repeats": repeats},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
