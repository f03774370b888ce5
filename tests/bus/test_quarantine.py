"""Per-point isolation: a permanently refused batch is narrowed to the points that caused it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from tests.bus.conftest import FAST_RETRIES, MakeBus
from trainbus.bus import (
    CursorStore,
    Event,
    JournalWriter,
    Log,
    PermanentSinkError,
    RetryableSinkError,
    Sink,
    StepEnd,
    replay,
)
from trainbus.bus._quarantine import MAX_NAMED, QuarantineLog


class _PoisonSink(Sink):
    """Refuses, like a server answering 400, every batch holding a poisoned seq; counts requests."""

    name = "poison"
    max_batch_size = 64

    def __init__(self, poisoned: set[int]) -> None:
        self.poisoned = poisoned
        self.requests: list[list[int]] = []
        self.received: list[int] = []

    async def write(self, batch: Sequence[Event]) -> None:
        seqs = [event.seq for event in batch]
        self.requests.append(seqs)
        bad = self.poisoned.intersection(seqs)
        if bad:
            raise PermanentSinkError(f"invalid points {sorted(bad)}", status=400)
        self.received.extend(seqs)


def _journal(path: Path, count: int) -> Path:
    writer = JournalWriter.open(path)
    writer.append([StepEnd(run_id="r", seq=s, time=1.0, global_step=s) for s in range(count)])
    writer.close()
    return path


async def _replay(tmp_path: Path, sink: Sink, count: int) -> None:
    journal = _journal(tmp_path / "journal.tbj", count)
    with anyio.fail_after(30):
        await replay(journal, [sink], cursor_dir=tmp_path / "cursors", policy=FAST_RETRIES)


async def test_one_poisoned_event_costs_thirteen_requests_among_sixty_four(
    tmp_path: Path,
) -> None:
    """Halving finds one poisoned event in a batch of 64 in exactly 13 requests (1 + 2 * log2 64),
    quarantines only it, delivers the other 127 of two batches once each in order, and moves the
    cursor to the end."""
    sink = _PoisonSink({37})
    with capture_logs() as logs:
        await _replay(tmp_path, sink, 128)
    loud = [(e["event"], e["log_level"]) for e in logs if e["log_level"] != "debug"]
    assert loud.count(("sink_batch_rejected", "warning")) == 1  # not one per refused part
    assert loud.count(("sink_quarantined", "warning")) == 1
    assert sink.received == [s for s in range(128) if s != 37]
    first_batch = [r for r in sink.requests if r[0] < 64]
    assert len(first_batch) == 13
    assert len(sink.requests) == 14  # the clean second batch takes one request
    assert CursorStore(tmp_path / "cursors").read("poison") == 127
    log = QuarantineLog.for_sink(CursorStore(tmp_path / "cursors"), "poison")
    assert [p.seq for p in log.points] == [37] and log.count == 1


@pytest.mark.parametrize("poisoned", [{0, 63}, {5, 6, 7}, {1, 20, 40, 62}, set(range(0, 64, 9))])
async def test_split_finds_exactly_the_poisoned_events_within_the_bound(
    tmp_path: Path, poisoned: set[int]
) -> None:
    """With k poisoned events among 64, the split quarantines exactly those k, delivers the rest
    once, and uses at most 1 + 2 * k * log2(64) requests."""
    sink = _PoisonSink(poisoned)
    await _replay(tmp_path, sink, 64)
    assert sink.received == [s for s in range(64) if s not in poisoned]
    assert len(sink.requests) <= 1 + 2 * len(poisoned) * int(math.log2(64))
    reports = await replay(tmp_path / "journal.tbj", [_PoisonSink(set())], cursor_dir=None)
    assert reports["poison"].delivered == 64  # the journal still holds the quarantined events
    log = QuarantineLog.for_sink(CursorStore(tmp_path / "cursors"), "poison")
    assert {p.seq for p in log.points} == poisoned and log.count == len(poisoned)


async def test_retryable_errors_while_narrowing_are_retried_not_quarantined(
    tmp_path: Path,
) -> None:
    """A retryable failure of a part is retried like any other; only the poisoned event is held."""
    sink = _PoisonSink({10})
    original = sink.write
    busy = [True]

    async def flaky_halves(batch: Sequence[Event]) -> None:
        if len(batch) == 32 and batch[0].seq == 32 and busy:
            busy.clear()  # once: the right half of the first split meets a busy server
            raise RetryableSinkError("server busy")
        await original(batch)

    sink.write = flaky_halves  # type: ignore[method-assign]
    await _replay(tmp_path, sink, 64)
    assert sink.received == [s for s in range(64) if s != 10]
    assert sink.requests.count(list(range(32, 64))) == 1  # the busy answer is not a request here
    log = QuarantineLog.for_sink(CursorStore(tmp_path / "cursors"), "poison")
    assert [p.seq for p in log.points] == [10]


class _RunLevelRefusal(_PoisonSink):
    """Refuses everything with a 403 and says that such an error is not about the points."""

    async def write(self, batch: Sequence[Event]) -> None:
        self.requests.append([e.seq for e in batch])
        raise PermanentSinkError("token revoked", status=403)

    def split(self, batch: Sequence[Event], error: PermanentSinkError) -> Sequence[Sequence[Event]]:
        return () if error.status == 403 else super().split(batch, error)


async def test_a_sink_can_decline_to_split_errors_that_are_not_about_points(
    tmp_path: Path,
) -> None:
    """A refusal the sink declares run-level costs one request per batch, not a split."""
    sink = _RunLevelRefusal(set())
    await _replay(tmp_path, sink, 128)
    assert len(sink.requests) == 2
    log = QuarantineLog.for_sink(CursorStore(tmp_path / "cursors"), "poison")
    assert log.count == 128 and len(log.points) == MAX_NAMED


class _ValidatingSink(Sink):
    """Holds back metrics named ``bad*`` itself and sends the rest."""

    name = "validating"
    events = (Log,)

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def write(self, batch: Sequence[Event]) -> None:
        for event in batch:
            assert isinstance(event, Log)
            for key in event.logs:
                if key.startswith("bad"):
                    self.quarantine(event, "name starts with bad", key=key)
                else:
                    self.sent.append((event.seq, key))


async def test_points_a_sink_quarantines_are_counted_named_and_kept_across_runs(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Points a sink holds back are in the stats, the report and the quarantine file; a second
    run on the same directory adds to the count without counting a re-sent batch twice."""
    sink = _ValidatingSink()
    with anyio.fail_after(20):
        async with make_bus([sink]) as bus:
            for step in range(5):
                bus.emit(Log, global_step=step, logs={"loss": 1.0, "bad/key": 2.0})
            await bus.drain()
    assert bus.report is not None
    report = bus.report["validating"]
    assert report.quarantined == 5 and report.skipped == 0 and report.delivered == 5
    assert [(p.seq, p.key) for p in report.quarantined_points] == [(s, "bad/key") for s in range(5)]
    assert [key for _, key in sink.sent] == ["loss"] * 5
    log = QuarantineLog.for_sink(CursorStore(tmp_path / "cursors"), "validating")
    assert log.count == 5
    assert log.record(list(report.quarantined_points), through_seq=4) == 0  # a re-send
    again = _ValidatingSink()
    with anyio.fail_after(20):
        async with make_bus([again]) as bus:
            bus.emit(Log, global_step=9, logs={"bad": 1.0})
            await bus.drain()
    assert bus.report is not None and bus.report["validating"].quarantined == 6
