"""An async service that trains and watches the bus report on itself.

``python -m examples.service_metrics`` (from the repository root) trains the digits MLP through an
``Orchestrator`` on the service's own loop, with a user sink (``examples.custom_sink.JsonLines``)
to deliver to. Meanwhile one task follows the live metrics stream (``orch.metrics()``: events
published, journaled, delivered, each sink's lag and health), another awaits the run's end
(``orch.wait_finished()``), and a Prometheus endpoint serves the same figures on 127.0.0.1 for
as long as the run is open (``--metrics-port``; 0 picks a free port). No server is needed: it runs
in a few seconds on a CPU. Needs ``pip install 'trainbus[prometheus]'`` for the endpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from examples import digits
from examples.custom_sink import JsonLines
from trainbus import Orchestrator, Trainer, TrainingArguments
from trainbus.bus import BusMetrics

__all__ = ["main", "train_and_watch"]


def describe(snapshot: BusMetrics) -> str:
    """One line per snapshot: what the bus did, and how far behind each sink is."""
    sinks = ", ".join(
        f"{s.name} {s.health} delivered={s.delivered} lag={s.lag_events} ({s.lag_seconds:.2f}s)"
        for s in snapshot.sinks
    )
    return (
        f"published={snapshot.published} journaled={snapshot.journaled} "
        f"journal={snapshot.journal_bytes / 1024:.0f} KiB | {sinks}"
    )


async def train_and_watch(
    output_dir: Path, *, max_steps: int = 100, metrics_port: int | None = 0, interval: float = 0.5
) -> dict[str, object]:
    """Train while watching the run's metrics; returns how it ended and what was seen."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=0.003,
        eval_strategy="steps",
        eval_steps=max(1, max_steps // 2),
        save_strategy="no",
        logging_steps=5,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=digits.model(),
        args=args,
        train_dataset=digits.train_dataset(),
        eval_dataset=digits.eval_dataset(),
        compute_metrics=digits.compute_metrics(),
    )
    snapshots: list[BusMetrics] = []
    ended: dict[str, str] = {}

    async def watch(orch: Orchestrator) -> None:
        async for snapshot in orch.metrics(interval=interval):  # ends after the run's last one
            snapshots.append(snapshot)
            print(describe(snapshot))

    async def await_the_end(orch: Orchestrator) -> None:
        ended["status"] = await orch.wait_finished()
        print(f"run {orch.run_id} finished: {ended['status']}")

    sink = JsonLines(output_dir / "metrics.jsonl")
    async with (
        anyio.create_task_group() as tg,
        Orchestrator(
            output_dir=output_dir, report_to="none", sinks=[sink], metrics_port=metrics_port
        ) as orch,
    ):
        if orch.metrics_url is not None:
            print(f"Prometheus metrics at {orch.metrics_url} while the run is open")
        tg.start_soon(watch, orch)
        tg.start_soon(await_the_end, orch)
        await orch.train(trainer)
    final = snapshots[-1]
    return {
        "status": ended["status"],
        "snapshots": len(snapshots),
        "published": final.published,
        "delivered": {s.name: s.delivered for s in final.sinks},
        "health": {s.name: s.health for s in final.sinks},
    }


def main() -> None:
    """Command-line entry: ``python -m examples.service_metrics [--metrics-port N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--output-dir", type=Path, default=Path("trainbus-demo/service-metrics"))
    parser.add_argument("--metrics-port", type=int, default=0, help="0: any free port")
    ns = parser.parse_args()
    result = anyio.run(
        lambda: train_and_watch(ns.output_dir, metrics_port=ns.metrics_port), backend=ns.backend
    )
    print(result)


if __name__ == "__main__":
    main()
