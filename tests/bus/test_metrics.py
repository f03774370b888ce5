"""The bus's own metrics (``Bus.metrics``) and the sink health log (``sink_state_changed``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
from structlog.testing import capture_logs

from tests.bus.conftest import MakeBus
from trainbus.bus import SINK_STATE_CHANGED, JournalReader, Log, RetryPolicy, StepEnd
from trainbus.bus._metrics import journal_bytes
from trainbus.bus.testing import RecordingSink


def _journal_size(path: Path) -> int:
    """The journal directory's bytes, counted here independently of the bus."""
    return sum(os.path.getsize(path / name) for name in os.listdir(path))


def _transitions(logs: list[dict[str, Any]], sink: str) -> list[tuple[str, str]]:
    return [
        (entry["previous"], entry["state"])
        for entry in logs
        if entry["event"] == SINK_STATE_CHANGED and entry["sink"] == sink
    ]


async def test_metrics_count_what_was_published_journaled_and_delivered(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Published, journaled and delivered agree with the journal on disk, live and after close."""
    journal = tmp_path / "journal.tbj"
    everything = RecordingSink("all", max_batch_size=16)
    logs_only = RecordingSink("logs", events=(Log,))
    with anyio.fail_after(30):
        async with make_bus([everything, logs_only]) as bus:
            for step in range(1, 101):
                bus.emit(StepEnd, global_step=step)
                if step % 10 == 0:
                    bus.emit(Log, global_step=step, logs={"loss": 1.0 / step})
            await bus.drain()
            await everything.wait_for(110)
            await logs_only.wait_for(10)
            live = bus.metrics()
            live_size = _journal_size(journal)
        closed = bus.metrics()
    on_disk = sum(1 for _ in JournalReader(journal).records())
    assert on_disk == 110
    assert (live.published, live.journaled, live.last_seq, live.queued) == (110, 110, 109, 0)
    assert live.running and not closed.running
    assert live.journal_bytes == live_size > 0
    sinks = {s.name: s for s in live.sinks}
    assert (sinks["all"].delivered, sinks["logs"].delivered) == (110, 10)
    assert sinks["all"].lag_events == sinks["all"].queued == 0
    assert {s.health for s in live.sinks} == {"healthy"}
    assert {s.name: s.delivered for s in closed.sinks} == {"all": 110, "logs": 10}
    assert {s.health for s in closed.sinks} == {"closed"}
    assert closed.journal_bytes == _journal_size(journal) > 0  # compressed at close


async def test_a_reopened_journal_counts_only_this_bus_events(make_bus: MakeBus) -> None:
    """``published`` counts what this bus numbered, not what an earlier bus left in the journal."""
    with anyio.fail_after(30):
        async with make_bus() as bus:
            bus.emit(StepEnd, global_step=1)
            bus.emit(StepEnd, global_step=2)
        async with make_bus() as again:
            again.emit(StepEnd, global_step=3)
            await again.drain()
            metrics = again.metrics()
    assert (metrics.published, metrics.journaled, metrics.last_seq) == (1, 1, 2)


def test_journal_bytes_of_nothing_a_file_and_a_directory(tmp_path: Path) -> None:
    """No journal is 0 bytes; a single-file journal and a directory of segments are measured."""
    assert journal_bytes(None) == 0
    assert journal_bytes(tmp_path / "missing") == 0
    (tmp_path / "one.tbj").write_bytes(b"x" * 7)
    assert journal_bytes(tmp_path / "one.tbj") == 7
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "a").write_bytes(b"x" * 5)
    (tmp_path / "segments" / "b.gz").write_bytes(b"x" * 3)
    assert journal_bytes(tmp_path / "segments") == 8


async def test_a_sink_that_fails_then_recovers_logs_each_change_once(make_bus: MakeBus) -> None:
    """Four retryable failures log one ``retrying`` and one recovery, whatever the batches."""
    sink = RecordingSink("flaky", max_batch_size=1)
    sink.fail_retryable(times=4)
    with anyio.fail_after(30), capture_logs() as logs:
        async with make_bus([sink]) as bus:
            for step in range(1, 6):
                bus.emit(StepEnd, global_step=step)
            await bus.drain()
            await sink.wait_for(5)
            stats = bus.stats()["flaky"]
    assert _transitions(logs, "flaky") == [
        ("healthy", "retrying"),
        ("retrying", "healthy"),
        ("healthy", "closed"),
    ]
    recovered = [e for e in logs if e["event"] == SINK_STATE_CHANGED and e["state"] == "healthy"]
    assert recovered[0]["attempts"] == 5
    assert [e["log_level"] for e in logs if e["event"] == SINK_STATE_CHANGED] == [
        "warning",
        "info",
        "info",
    ]
    assert (stats.retried, stats.delivered, stats.health) == (4, 5, "healthy")


async def test_retrying_again_after_recovering_is_a_new_change(make_bus: MakeBus) -> None:
    """Two separate outages are two ``retrying`` changes, each followed by its recovery."""
    sink = RecordingSink("flaky")
    with anyio.fail_after(30), capture_logs() as logs:
        async with make_bus([sink]) as bus:
            for outage in range(2):
                sink.fail_retryable(times=2)
                bus.emit(StepEnd, global_step=outage)
                await bus.drain()
                await sink.wait_for(outage + 1)
    assert _transitions(logs, "flaky") == [
        ("healthy", "retrying"),
        ("retrying", "healthy"),
        ("healthy", "retrying"),
        ("retrying", "healthy"),
        ("healthy", "closed"),
    ]


async def test_a_refused_batch_whose_parts_all_arrive_recovers(make_bus: MakeBus) -> None:
    """Retrying, then refused, then delivered in halves: the sink is ``healthy`` again."""
    sink = RecordingSink("narrowed")
    sink.fail_retryable(times=1)
    sink.fail_permanent("one bad part, somewhere")
    with anyio.fail_after(30), capture_logs() as logs:
        async with make_bus([sink]) as bus:
            bus.emit(StepEnd, global_step=1)
            bus.emit(StepEnd, global_step=2)
            await bus.drain()
            await sink.wait_for(2)
            stats = bus.stats()["narrowed"]
    assert [len(batch) for batch in sink.attempts] == [2, 2, 1, 1]
    assert (stats.health, stats.quarantined) == ("healthy", 0)
    assert _transitions(logs, "narrowed") == [
        ("healthy", "retrying"),
        ("retrying", "healthy"),
        ("healthy", "closed"),
    ]


async def test_quarantine_is_sticky_and_failure_is_final(make_bus: MakeBus) -> None:
    """A refused point makes a sink ``quarantined`` for the run; a crashing one ends ``failed``."""
    refusing = RecordingSink("refusing", max_batch_size=1)  # one event a write, in order
    refusing.fail_permanent("bad key")
    refusing.fail_retryable(times=1)
    crashing = RecordingSink("crashing")
    crashing.fail_unexpected(times=3)
    policy = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_crashes=3)
    with anyio.fail_after(30), capture_logs() as logs:
        async with make_bus([refusing, crashing], retry_policy=policy) as bus:
            bus.emit(Log, global_step=1, logs={"bad": 1.0})
            bus.emit(Log, global_step=2, logs={"good": 1.0})
            await bus.drain()
            await refusing.wait_for(1)
            live = bus.stats()["refusing"]
        stats = bus.stats()  # the runners' last figures stay readable after the close
    assert _transitions(logs, "refusing") == [
        ("healthy", "quarantined"),
        ("quarantined", "retrying"),
        ("retrying", "quarantined"),
        ("quarantined", "closed"),
    ]
    assert (live.quarantined, live.health, live.retried) == (1, "quarantined", 1)
    assert (stats["refusing"].delivered, stats["refusing"].health) == (1, "closed")
    assert _transitions(logs, "crashing") == [("healthy", "retrying"), ("retrying", "failed")]
    assert stats["crashing"].health == "failed" and stats["crashing"].crashes == 3
