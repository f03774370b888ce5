"""``Bus.begin_flush``: the sinks deliver before the close, and the close still owes them nothing.

The trainer asks for it once the last training step's events are out, so that delivery runs
while the final evaluation and save do. These tests use sinks whose batch timer would hold
events for an hour: anything they receive before the close came from the flush.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import anyio.to_thread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.bus.conftest import MakeBus
from trainbus.bus import Bus, JournalReader, Log, StepEnd
from trainbus.bus._events import RunFinished, RunStarted
from trainbus.bus._follow import follow
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.orchestrator.sink_host import read_reports

HOUR = 3600.0
"""A batch latency no test waits out: what arrives before the close was sent by a flush."""


def _steps(bus: Bus, first: int, last: int) -> None:
    for step in range(first, last + 1):
        bus.emit(StepEnd, global_step=step)
        bus.emit(Log, global_step=step, logs={"loss": 1.0 / step})


async def test_a_flush_sends_what_is_queued_without_waiting_for_the_batch_timer(
    make_bus: MakeBus,
) -> None:
    """After ``begin_flush`` from the training thread, a sink holding an hour's batch receives
    everything published before it, while the bus is still open."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    with anyio.fail_after(30):
        async with make_bus([sink]) as bus:

            def train() -> None:
                _steps(bus, 1, 20)
                bus.begin_flush()

            await anyio.to_thread.run_sync(train)
            await sink.wait_for(40)
            assert not sink.closed
    assert [e.seq for e in sink.received] == list(range(40))


async def test_events_after_the_flush_are_delivered_once_in_order_and_journaled(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Events published after the flush began (the final evaluation's, the run's end) reach the
    sink exactly once, in ``seq`` order, with the journal holding the same sequence."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    with anyio.fail_after(30):
        async with make_bus([sink]) as bus:

            def train() -> None:
                _steps(bus, 1, 10)
                bus.begin_flush()
                _steps(bus, 11, 30)  # published while the flushed batch is on its way
                bus.begin_flush()
                bus.emit(Log, global_step=30, logs={"eval_loss": 0.5})
                bus.emit(RunFinished, global_step=30, status="completed")

            await anyio.to_thread.run_sync(train)
    seqs = [e.seq for e in sink.received]
    assert seqs == list(range(62))
    journal = [e.seq for e in JournalReader(tmp_path / "journal.tbj").read_from()]
    assert journal == seqs


async def test_a_flush_never_shortens_a_stuck_sinks_close_deadline(make_bus: MakeBus) -> None:
    """A sink stuck in ``write`` after the flush: the close still ends at the flush deadline and
    reports what is left as undelivered."""
    sink = RecordingSink("stuck", max_batch_latency=HOUR)
    sink.block()
    with anyio.fail_after(30):
        async with make_bus([sink], close_deadline=0.5) as bus:

            def train() -> None:
                _steps(bus, 1, 5)
                bus.begin_flush()
                _steps(bus, 6, 8)

            await anyio.to_thread.run_sync(train)
    assert bus.report is not None
    report = bus.report["stuck"]
    assert report.undelivered == 16
    assert report.acknowledged_seq == -1
    assert sink.received == []


async def test_a_flush_on_a_closed_bus_does_nothing(make_bus: MakeBus) -> None:
    """``begin_flush`` before the bus opens or after it closed neither raises nor publishes."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    bus = make_bus([sink])
    bus.begin_flush()
    with anyio.fail_after(30):
        async with bus:
            bus.emit(StepEnd, global_step=1)
    bus.begin_flush()
    assert [e.seq for e in sink.received] == [0]


async def test_a_followed_journal_is_flushed_on_the_flush_event(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """The sink process's side (``follow``): once ``flush`` is set, a sink holding an hour's
    batch receives what the journal holds before ``done``; after ``done``, the rest, once each
    and in order."""
    sink = RecordingSink("slow", max_batch_latency=HOUR)
    done, flush = anyio.Event(), anyio.Event()
    with anyio.fail_after(60):
        async with make_bus() as bus, anyio.create_task_group() as tg:

            async def deliver() -> None:
                await follow(
                    tmp_path / "journal.tbj",
                    [sink],
                    cursor_dir=tmp_path / "cursors",
                    done=done,
                    flush=flush,
                    interval=0.01,
                )

            tg.start_soon(deliver)
            _steps(bus, 1, 10)
            await bus.drain()
            flush.set()
            await sink.wait_for(10)  # the Log events: a follower sink gets what it accepts
            assert not sink.closed
            _steps(bus, 11, 15)
            await bus.drain()
            done.set()
    assert [e.seq for e in sink.received] == list(range(30))


async def test_the_sink_process_flushes_too_and_delivers_every_point_once(
    tmp_path: Path,
) -> None:
    """With TensorBoard in the sink process, a run that flushes before its end (the flush goes
    down the child's pipe) still has every scalar written once, at its step, and the child's
    report covers the whole journal."""
    logs = tmp_path / "tb"
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(logs), "TRAINBUS_SINK_PROCESS": "1"}
    flushed = threading.Event()

    def train(bus: Bus) -> None:
        bus.emit(RunStarted, run_name="flush", config={})
        _steps(bus, 1, 30)
        bus.begin_flush()
        flushed.set()
        _steps(bus, 31, 40)
        bus.emit(RunFinished, global_step=40, status="completed")

    def scalars() -> list[tuple[int, float]]:
        accumulator = EventAccumulator(str(logs), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train/loss" not in accumulator.Tags()["scalars"]:
            return []
        return [(s.step, round(s.value, 6)) for s in accumulator.Scalars("train/loss")]

    with anyio.fail_after(90):
        async with Orchestrator(output_dir=tmp_path, report_to="tensorboard", env=env) as orch:
            assert orch._host is not None
            await orch.run_in_thread(train)
            assert flushed.is_set()
    run_dir = find_run_dir(tmp_path)
    assert scalars() == [(step, round(1.0 / step, 6)) for step in range(1, 41)]
    report = read_reports(run_dir)["tensorboard"]
    assert report.undelivered == 0
    last = JournalReader(run_dir.journal_path).last_seq()
    assert report.acknowledged_seq == last
