"""The sink runtime: retries, permanent errors, isolation, overflow, close deadline, replay."""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psutil  # type: ignore[import-untyped]  # no stubs in the environment
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.bus.conftest import FAST_RETRIES, MakeBus
from trainbus.bus import (
    Bus,
    CursorStore,
    JournalReader,
    JournalWriter,
    Log,
    RetryPolicy,
    StepEnd,
    replay,
)
from trainbus.bus.testing import RecordingSink


def make_bus_at(root: Path, sinks: list[RecordingSink], **kw: Any) -> Bus:
    """A bus journaling under ``root``, for tests that run their own event loops."""
    return Bus(
        run_id="r", journal_path=root / "j.tbj", sinks=sinks, retry_policy=FAST_RETRIES, **kw
    )


def _seqs(sink: RecordingSink) -> list[int]:
    return [event.seq for event in sink.received]


async def _publish_from_thread(bus: Any, count: int, *, log_every: int = 0) -> None:
    def train() -> None:
        for step in range(count):
            bus.emit(StepEnd, global_step=step)
            if log_every and step % log_every == 0:
                bus.emit(Log, global_step=step, logs={"loss": 1.0})

    await anyio.to_thread.run_sync(train)


def test_retry_delay_grows_and_honours_retry_after() -> None:
    """Backoff grows exponentially up to its cap, and never undercuts the server's Retry-After."""
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=8.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(1, retry_after=30.0) == 30.0
    jittered = RetryPolicy(initial_backoff=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(100))
    assert policy.delay(5000) == 8.0  # a day-long outage: the exponent must not overflow


@dataclass(frozen=True)
class _RecordingPolicy(RetryPolicy):
    """Fast retries that remember each failure and ``Retry-After`` they were asked about."""

    asked: list[tuple[int, float | None]] = field(default_factory=list)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        self.asked.append((attempt, retry_after))
        return 0.001


async def test_retryable_failures_then_success_deliver_exactly_once(make_bus: MakeBus) -> None:
    """A sink failing with retryable errors (429-like included) gets every event once, in order,
    and the server's Retry-After reaches the backoff of the retries it asked for."""
    sink = RecordingSink(max_batch_size=7)
    sink.fail_retryable(2)
    sink.fail_retryable(2, retry_after=30.0)
    policy = _RecordingPolicy()
    with anyio.fail_after(20):
        async with make_bus([sink], retry_policy=policy) as bus:
            await _publish_from_thread(bus, 100)
    assert _seqs(sink) == list(range(100))
    assert bus.report is not None and bus.report["recording"].undelivered == 0
    assert len(sink.attempts) == len(sink.batches) + 4
    assert policy.asked == [(1, None), (2, None), (3, 30.0), (4, 30.0)]
    assert sink.opened and sink.closed


async def test_permanent_error_is_reported_with_server_message(make_bus: MakeBus) -> None:
    """A permanent error is logged with the server's message and counted; the refused batch is
    then split, and halves the server accepts are delivered, so a one-off refusal loses nothing."""
    sink = RecordingSink(max_batch_size=10)
    body = '{"error_code": "INVALID_PARAMETER_VALUE", "message": "metric key too long"}'
    sink.fail_permanent("HTTP 400 from tracker", status=400, body=body)
    with anyio.fail_after(20), capture_logs() as logs:
        async with make_bus([sink]) as bus:
            for step in range(30):
                bus.emit(StepEnd, global_step=step)
            await bus.drain()
            await sink.wait_for(30)
            stats = bus.stats()["recording"]
    rejected = [entry for entry in logs if entry["event"] == "sink_batch_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["error"] == "HTTP 400 from tracker" and rejected[0]["body"] == body
    assert rejected[0]["status"] == 400
    assert (stats.failed, stats.skipped, stats.retried, stats.quarantined) == (1, 0, 0, 0)
    assert _seqs(sink) == list(range(30))
    assert bus.report is not None and bus.report["recording"].skipped == 0


async def test_a_crashing_sink_does_not_affect_others_or_the_trainer(make_bus: MakeBus) -> None:
    """A sink raising bugs is disabled after bounded retries; the trainer and other sinks go on."""
    broken = RecordingSink("broken")
    broken.fail_unexpected(10, error=ZeroDivisionError("bug in sink"))
    healthy = RecordingSink("healthy")
    with anyio.fail_after(20), capture_logs() as logs:
        async with make_bus([broken, healthy]) as bus:

            def train() -> int:
                for step in range(500):
                    bus.emit(StepEnd, global_step=step)
                    bus.barrier([lambda a, s, c, **k: c + 1], None, None, 0)
                bus.fsync()
                return step

            assert await anyio.to_thread.run_sync(train) == 499
    assert _seqs(healthy) == list(range(500))
    assert bus.report is not None
    assert bus.report["broken"].disabled and bus.report["broken"].undelivered == 500
    assert "ZeroDivisionError" in (bus.report["broken"].last_error or "")
    assert [e["event"] for e in logs].count("sink_crashed") == FAST_RETRIES.max_crashes
    assert any(e["event"] == "sink_disabled" for e in logs)


async def test_a_sink_that_crashes_once_recovers_without_duplicates(make_bus: MakeBus) -> None:
    """One unexpected exception is retried, and the batch is then delivered exactly once."""
    sink = RecordingSink(max_batch_size=5)
    sink.fail_unexpected(1)
    with anyio.fail_after(20):
        async with make_bus([sink]) as bus:
            await _publish_from_thread(bus, 40)
    assert _seqs(sink) == list(range(40))
    assert bus.report is not None and not bus.report["recording"].disabled


async def test_blocked_sink_overflows_to_journal_and_catches_up(make_bus: MakeBus) -> None:
    """A sink stuck while 200k events are published: memory stays bounded, then it gets all of them.

    The benchmark (benchmarks/bench_bus.py) runs the same scenario with 1,000,000 events.
    """
    count = 200_000
    stuck = RecordingSink("stuck", max_batch_size=1000)
    stuck.block()
    process = psutil.Process()
    with anyio.fail_after(120), capture_logs() as logs:
        async with make_bus([stuck], queue_size=2000) as bus:
            gc.collect()
            rss_before = process.memory_info().rss
            await _publish_from_thread(bus, count)
            await bus.drain()
            rss_growth = process.memory_info().rss - rss_before
            stats = bus.stats()["stuck"]
            stuck.release()
            await stuck.wait_for(count)
    assert stats.mode == "catch-up" and stats.lag_events >= count - 2000 and stats.lag_seconds > 0
    assert rss_growth < 64 * 2**20, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    assert _seqs(stuck) == list(range(count))
    modes = [e["mode"] for e in logs if e["event"] == "sink_mode" and e["sink"] == "stuck"]
    assert modes == ["live", "catch-up", "live"]


async def test_close_deadline_reports_undelivered_and_sync_finishes(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """A sink still stuck at the close deadline is reported with its backlog; replay delivers it."""
    stuck = RecordingSink("tracker", events=(Log,))
    stuck.block()
    with anyio.fail_after(20):
        async with make_bus([stuck], close_deadline=0.05) as bus:
            await _publish_from_thread(bus, 300, log_every=3)
    assert bus.report is not None and bus.report["tracker"].undelivered == 100
    assert CursorStore(tmp_path / "cursors").read("tracker") == -1
    later = RecordingSink("tracker", events=(Log,))
    with anyio.fail_after(20):
        reports = await replay(tmp_path / "journal.tbj", [later], cursor_dir=tmp_path / "cursors")
    assert [e.global_step for e in later.received] == list(range(0, 300, 3))
    assert reports["tracker"].undelivered == 0 and reports["tracker"].delivered == 100
    last = JournalReader(tmp_path / "journal.tbj").last_seq()
    assert CursorStore(tmp_path / "cursors").read("tracker") == last


async def test_filters_by_type_and_every_match_between_live_and_replay(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """events= and every= select the same events live and on replay from the journal."""
    live = RecordingSink("live", events=(Log,), every=4)
    with anyio.fail_after(20):
        async with make_bus([live]) as bus:
            await _publish_from_thread(bus, 40, log_every=2)
        replayed = RecordingSink("replayed", events=(Log,), every=4)
        await replay(tmp_path / "journal.tbj", [replayed], cursor_dir=None)
    assert [e.global_step for e in live.received] == list(range(0, 40, 4))
    assert live.received == replayed.received


async def test_restarted_bus_catches_up_a_lagging_sink(make_bus: MakeBus, tmp_path: Path) -> None:
    """A bus reopened on a journal resumes seq numbering and sends a sink what its cursor lacks."""
    writer = JournalWriter.open(tmp_path / "journal.tbj")
    writer.append([StepEnd(run_id="test-run", seq=s, time=1.0, global_step=s) for s in range(10)])
    writer.close()
    CursorStore(tmp_path / "cursors").write("recording", 4)
    sink = RecordingSink()
    with anyio.fail_after(20):
        async with make_bus([sink]) as bus:
            event = bus.emit(StepEnd, global_step=10)
    assert event.seq == 10
    assert _seqs(sink) == list(range(5, 11))


class _Crash(BaseException):
    """The process dying: not an Exception, so no isolation layer catches it."""


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 9), crash_after=st.integers(0, 8))
def test_crash_between_accept_and_cursor_resends_never_skips(
    n: int, batch: int, crash_after: int
) -> None:
    """If the process dies after the remote accepted a batch but before the cursor moved,
    the next sync sends that batch again: every event arrives at least once, none is skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        journal, cursors = Path(tmp) / "journal.tbj", Path(tmp) / "cursors"
        writer = JournalWriter.open(journal)
        writer.append([StepEnd(run_id="r", seq=s, time=1.0, global_step=s) for s in range(n)])
        writer.close()
        first = RecordingSink("remote", max_batch_size=batch)
        first.fail_after_accepting(_Crash(), after=crash_after)

        async def run(sink: RecordingSink) -> None:
            with anyio.fail_after(20):
                await replay(journal, [sink], cursor_dir=cursors, policy=FAST_RETRIES)

        crashed = False
        try:
            anyio.run(run, first)
        except BaseException as exc:  # the simulated death surfaces as a (group of) _Crash
            crashed = isinstance(exc, _Crash) or "_Crash" in repr(exc)
            if not crashed:
                raise
        assert crashed == (n > crash_after * batch)
        cursor = CursorStore(cursors).read("remote")
        delivered_first = _seqs(first)
        assert cursor <= (delivered_first[-1] if delivered_first else -1)
        second = RecordingSink("remote", max_batch_size=batch)
        anyio.run(run, second)
        assert _seqs(second) == list(range(cursor + 1, n))
        assert set(delivered_first) | set(_seqs(second)) == set(range(n))
        if crashed:
            assert _seqs(second)[0] <= first.batches[-1][0].seq


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_runtime_on_both_backends(tmp_path: Path, backend: str) -> None:
    """Retries and overflow behave the same on asyncio and trio."""
    sink = RecordingSink(max_batch_size=50)
    sink.fail_retryable(2, retry_after=0.001)

    async def main() -> None:
        with anyio.fail_after(20):
            async with make_bus_at(tmp_path / backend, [sink], queue_size=1) as bus:
                await _publish_from_thread(bus, 2000)

    anyio.run(main, backend=backend)
    assert _seqs(sink) == list(range(2000))


class _PickySink(RecordingSink):
    """A user sink whose accepts() override has a bug."""

    def accepts(self, event: Any) -> bool:
        if isinstance(event, Log):
            raise KeyError("oops")
        return True


async def test_a_sink_whose_filter_raises_is_disabled_alone(make_bus: MakeBus) -> None:
    """An exception from a sink's accepts() disables that sink only; the bus and others go on."""
    picky, healthy = _PickySink("picky"), RecordingSink("healthy")
    with anyio.fail_after(20):
        async with make_bus([picky, healthy]) as bus:
            await _publish_from_thread(bus, 50, log_every=10)
    assert len(healthy.received) == 55
    assert bus.report is not None and bus.report["picky"].disabled
    assert "KeyError" in (bus.report["picky"].last_error or "")


async def test_a_sink_that_cannot_read_the_journal_is_disabled_alone(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Corruption met while catching up disables that sink; the live sink still gets everything."""
    behind, live = RecordingSink("behind", max_batch_size=10), RecordingSink("live")
    behind.block()
    with anyio.fail_after(20):
        async with make_bus([behind, live], queue_size=10) as bus:
            await _publish_from_thread(bus, 400)
            await live.wait_for(400)
            (segment,) = (tmp_path / "journal.tbj").glob("*.tbj")
            with open(segment, "r+b") as f:  # damage a record in the middle
                f.seek(20_000)
                f.write(b"\xff" * 8)
            behind.release()
    assert _seqs(live) == list(range(400))
    assert bus.report is not None and bus.report["behind"].disabled
    assert "JournalCorruptError" in (bus.report["behind"].last_error or "")


async def test_catching_up_yields_to_other_tasks(tmp_path: Path) -> None:
    """A sink scanning a long journal for rare events lets the loop's other tasks run meanwhile."""
    writer = JournalWriter.open(tmp_path / "journal.tbj")
    writer.append([StepEnd(run_id="r", seq=s, time=1.0, global_step=s) for s in range(50_000)])
    writer.close()
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await replay(tmp_path / "journal.tbj", [RecordingSink(events=(Log,))], cursor_dir=None)
            done = True
    assert ticks >= 5


def test_a_recording_sink_serves_runs_on_different_loops(tmp_path: Path) -> None:
    """One RecordingSink, built outside any loop, works in an asyncio run and then a trio run."""
    sink = RecordingSink()

    async def run(name: str) -> None:
        with anyio.fail_after(10):
            async with make_bus_at(tmp_path / name, [sink]) as bus:
                sink.block()
                bus.emit(StepEnd, global_step=1)
                await bus.drain()
                await anyio.lowlevel.checkpoint()
                sink.release()
                await sink.wait_for(len(sink.received) + 1)

    anyio.run(run, "a", backend="asyncio")
    anyio.run(run, "b", backend="trio")
    assert len(sink.received) == 2


async def test_logging_follows_state_changes_not_events(make_bus: MakeBus) -> None:
    """Thousands of events through healthy sinks log a handful of lines, not one per event."""
    sinks = [RecordingSink("a", max_batch_size=7), RecordingSink("b", events=(Log,))]
    with anyio.fail_after(20), capture_logs() as logs:
        async with make_bus(sinks) as bus:
            await _publish_from_thread(bus, 5000, log_every=5)
            live = bus.stats()
    assert len(sinks[0].received) == 6000 and len(sinks[1].received) == 1000
    assert {s.mode for s in live.values()} == {"live"}
    assert len(logs) <= 8, [entry["event"] for entry in logs]


async def test_sinks_are_flushed_when_training_fails(make_bus: MakeBus) -> None:
    """If the body of `async with bus` raises, sinks still get everything, then it propagates."""
    sink = RecordingSink(max_batch_latency=60.0)
    with anyio.fail_after(20), pytest.raises(ZeroDivisionError):
        async with make_bus([sink]) as bus:
            for step in range(10):
                bus.emit(StepEnd, global_step=step)
            _ = 1 / 0
    assert _seqs(sink) == list(range(10))
    assert bus.report is not None and bus.report["recording"].undelivered == 0
