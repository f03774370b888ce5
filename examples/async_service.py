"""Training inside an async service: the host's loop keeps serving while a model trains.

``python -m examples.async_service`` (from the repository root) starts a tiny "service" task that
ticks every 10 ms, trains the digits MLP through an ``Orchestrator`` on the same loop, watches the
evaluations live with ``orch.events(Evaluate)``, and reports how late the ticks ever were: the
training runs in a worker thread, so the loop's lag stays in milliseconds.

Runs on asyncio by default; ``--backend trio`` runs the same code on trio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio

from examples import digits
from trainbus import Orchestrator, Trainer, TrainingArguments
from trainbus.bus import Evaluate, Subscription

__all__ = ["main", "serve_and_train"]


async def ticker(interval: float, gaps: list[float], stop: anyio.Event) -> None:
    """The service's own work: something that must run every ``interval`` seconds."""
    last = time.perf_counter()
    while not stop.is_set():
        await anyio.sleep(interval)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def serve_and_train(output_dir: Path, *, max_steps: int = 200) -> dict[str, float]:
    """Train while ticking; returns the final eval accuracy and the largest tick gap (seconds)."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=0.003,
        eval_strategy="steps",
        eval_steps=50,
        save_strategy="no",
        logging_steps=10,
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
    gaps: list[float] = []
    accuracy = 0.0

    async def watch(evaluations: Subscription) -> None:
        nonlocal accuracy
        async with evaluations:
            async for event in evaluations:  # ends when the run closes
                assert isinstance(event, Evaluate)
                value = event.metrics.get("eval_accuracy")
                if isinstance(value, float):
                    accuracy = value
                    print(f"step {event.global_step:>4}: eval accuracy {value:.3f}")

    stop_ticking = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker, 0.010, gaps, stop_ticking)
        async with Orchestrator(output_dir=output_dir, report_to="none") as orch:
            # Subscribe before training starts, so the watcher cannot miss an early event.
            tg.start_soon(watch, orch.events(Evaluate))
            await orch.train(trainer)
        stop_ticking.set()
    return {"eval_accuracy": accuracy, "max_tick_gap": max(gaps, default=0.0)}


def main() -> None:
    """Command-line entry: ``python -m examples.async_service [--backend trio]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--output-dir", type=Path, default=Path("trainbus-demo/async-service"))
    ns = parser.parse_args()
    result = anyio.run(serve_and_train, ns.output_dir, backend=ns.backend)
    print(
        f"eval accuracy {result['eval_accuracy']:.3f}; "
        f"largest gap between 10 ms ticks: {result['max_tick_gap'] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
