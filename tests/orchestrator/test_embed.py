"""Training inside a running async application, on asyncio and on trio.

The host's own task ticks every 10 ms while a real ``Trainer`` trains. Halfway through, a callback
on the training thread waits until the host has ticked three times: the host's loop must run
while training is under way, however busy the machine (a loop blocked by training would never
tick, and the wait would give up after a minute). The largest gap between ticks is only recorded
(``record_property`` and stdout): it depends on the machine's load, and the speed target lives in
``benchmarks/bench_embed.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from trainbus.bus._events import Log, RunFinished
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.run import Orchestrator, warm_up
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

STEPS = 60
TICK = 0.010


def make_trainer(output_dir: Path, report_to: str = "none") -> Trainer:
    """A tiny regression run: a few dozen CPU steps."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        logging_steps=10,
        save_strategy="no",
        report_to=report_to,
        disable_tqdm=True,
    )
    return Trainer(model=TinyRegressor(), args=args, train_dataset=RegressionDataset(64))


TICKS_DURING_TRAINING = 3
WAIT_FOR_TICKS_S = 60.0
"""A bound on the wait only: three ticks take 30 ms on a loop that runs at all."""


async def ticker(gaps: list[float]) -> None:
    """The host service's periodic work."""
    last = time.perf_counter()
    while True:
        await anyio.sleep(TICK)
        now = time.perf_counter()
        gaps.append(now - last - TICK)
        last = now


class WaitForTicks(TrainerCallback):
    """Halfway through training, waits (on the training thread) for the host to tick."""

    def __init__(self, gaps: list[float]) -> None:
        self.gaps = gaps
        self.ticked: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != STEPS // 2:
            return
        before = len(self.gaps)
        deadline = time.monotonic() + WAIT_FOR_TICKS_S
        while len(self.gaps) < before + TICKS_DURING_TRAINING and time.monotonic() < deadline:
            time.sleep(TICK / 2)
        self.ticked.append(len(self.gaps) - before)


async def train_while_ticking(output_dir: Path, *, via_train_async: bool) -> dict[str, Any]:
    """Run the tiny training beside a 10 ms ticker; return the largest lag and what was seen."""
    warm_up()
    trainer = make_trainer(output_dir)
    gaps: list[float] = []
    waiter = WaitForTicks(gaps)
    trainer.add_callback(waiter)
    sink = RecordingSink("rec", events=(Log, RunFinished))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker, gaps)
        if via_train_async:
            await trainer.train_async()
        else:
            async with Orchestrator(output_dir=output_dir, report_to="none", sinks=[sink]) as orch:
                await orch.train(trainer)
        tg.cancel_scope.cancel()
    return {"max_lag": max(gaps, default=0.0), "ticks": waiter.ticked, "sink": sink}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("via_train_async", [False, True], ids=["orchestrator", "train_async"])
def test_host_loop_keeps_ticking_while_training(
    tmp_path: Path,
    backend: str,
    via_train_async: bool,
    record_property: Any,
) -> None:
    """The host's ticker keeps running during training and the run completes with its journal."""

    async def main() -> dict[str, Any]:
        with anyio.fail_after(120):
            return await train_while_ticking(tmp_path, via_train_async=via_train_async)

    result = anyio.run(main, backend=backend)
    record_property("max_tick_lag_ms", round(result["max_lag"] * 1000, 1))
    print(f"\n{backend}: largest tick lag {result['max_lag'] * 1000:.1f} ms")
    [ticked] = result["ticks"]
    assert ticked >= TICKS_DURING_TRAINING  # the host's loop ran while training was under way
    record = find_run_dir(tmp_path).read_record()
    assert record.status == "completed"
    if not via_train_async:
        logs = [e for e in result["sink"].received if isinstance(e, Log)]
        assert [e.global_step for e in logs if "loss" in e.logs] == list(range(10, STEPS + 1, 10))


async def test_cancelling_the_host_stops_training_and_closes_the_run(tmp_path: Path) -> None:
    """Cancelling ``orch.train`` stops the loop after its current step and closes the run."""
    trainer = make_trainer(tmp_path)
    trainer.args.max_steps = 1_000_000
    seen_step = anyio.Event()

    async def cancel_after_first_log(orch: Orchestrator, scope: anyio.CancelScope) -> None:
        async with orch.events(Log) as events:
            async for _ in events:
                seen_step.set()
                scope.cancel()
                return

    with anyio.fail_after(60):
        async with (
            Orchestrator(output_dir=tmp_path, report_to="none") as orch,
            anyio.create_task_group() as tg,
        ):
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_after_first_log, orch, scope)
                await orch.train(trainer)
    assert seen_step.is_set()
    assert trainer.state.global_step < 1_000_000
    assert orch.run_dir.read_record().status == "stopped"


def test_the_async_service_example_trains_and_reports(tmp_path: Path) -> None:
    """``examples/async_service.py`` trains on trio, watches evaluations and measures its ticks."""
    from examples.async_service import serve_and_train

    async def main() -> dict[str, float]:
        with anyio.fail_after(120):
            return await serve_and_train(tmp_path, max_steps=50)

    result = anyio.run(main, backend="trio")
    assert result["eval_accuracy"] > 0.5
    assert 0.0 <= result["max_tick_gap"] < 1.0


async def test_cancelling_train_async_stops_after_the_current_step(tmp_path: Path) -> None:
    """``await trainer.train_async()`` under a cancelled scope stops early and closes its run."""
    trainer = make_trainer(tmp_path)
    trainer.args.max_steps = 1_000_000
    with anyio.fail_after(60):
        with anyio.move_on_after(0.5):
            await trainer.train_async()
    assert 0 < trainer.state.global_step < 1_000_000
    assert find_run_dir(tmp_path).read_record().status in ("killed", "stopped")
