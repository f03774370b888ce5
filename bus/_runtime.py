"""The sink runtime: one task per sink that batches, retries, moves the cursor and catches up.

Each sink is fed from a bounded in-memory queue while it keeps up (``live``). When the queue is
full the runtime stops queueing for that sink and marks it ``catch-up``: once the queue is
drained it reads the journal from the first event it missed, and goes back to ``live`` when it
reaches the journal's end. Memory stays bounded and no event is dropped, however long a sink
is stuck. The same runner, started on a finished journal, is ``replay`` for ``trainbus sync``.

Everything here runs on the bus's event loop; ``offer`` is called by the bus right after a burst
of events was appended to the journal, with no checkpoint in between, so "the journal's last
seq" and "the last event offered" are always the same number when a runner looks.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog

from trainbus.bus._cursor import CursorStore
from trainbus.bus._errors import PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Event, Log
from trainbus.bus._health import SinkHealthLog
from trainbus.bus._journal import JournalReader, Record, _decode
from trainbus.bus._quarantine import QuarantineLog
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._sink import Sink
from trainbus.bus._stats import QuarantinedPoint, SinkMode, SinkReport, SinkStats

__all__ = ["DEFAULT_QUEUE_SIZE", "JournalSource", "SinkRunner", "replay"]

log = structlog.get_logger(__name__)

DEFAULT_QUEUE_SIZE = 8192
_CLOSE_TIMEOUT = 10.0
_SCAN_BUDGET = 8192
"""Most journal records one catch-up read looks at before yielding to the loop."""


class JournalSource(Protocol):
    """What a runner needs from the journal: where it is, how far it goes, where to start."""

    @property
    def path(self) -> Path: ...

    @property
    def last_seq(self) -> int: ...

    def offset_for(self, seq: int) -> int: ...


class _FinishedJournal:
    """A journal nobody writes to any more (``trainbus sync``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_seq = JournalReader(path).last_seq()

    def offset_for(self, seq: int) -> int:
        return 0


class SinkRunner:
    """Delivers one sink's events; created and driven by the bus (or by ``replay``)."""

    def __init__(
        self,
        sink: Sink,
        source: JournalSource,
        cursors: CursorStore,
        *,
        policy: RetryPolicy | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        refill: Callable[[], None] | None = None,
    ) -> None:
        """``refill`` is called when the sink has run dry and waits: the bus hands it what was
        published since its last poll, instead of letting an idle sink wait for that poll."""
        self.sink = sink
        self._refill = refill
        self.name = sink.sink_name
        self._source = source
        self._cursors = cursors
        self._policy = policy or RetryPolicy()
        self._queue: deque[Event] = deque()
        self._queue_size = max(queue_size, sink.max_batch_size)
        self._first_queued_at = 0.0
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._deadline = math.inf
        self._closing = False
        self._flush_through = -1
        self._flush_at = math.inf
        """``flush_now``: queued events up to ``_flush_through`` go at ``_flush_at``, or sooner."""
        self._write_s = 0.0
        """How long the last delivery took (what a flush waits for the close: ``flush_now``)."""
        self._mode: SinkMode = "starting"
        self.acked = cursors.read(self.name, journal_last_seq=source.last_seq)
        self._next_seq = self.acked + 1
        self._records: Generator[Record, None, None] | None = None
        self._opened = False
        self._read_offset = 0
        self._in_flight: Sequence[Event] = ()
        self._held: dict[tuple[int, str | None], QuarantinedPoint] = {}
        self._accepted_seqs: set[int] | None = None  # while narrowing a refused batch
        self._quarantine = QuarantineLog.for_sink(cursors, self.name)
        self._delivered = self._retried = self._failed = self._skipped = self._crashes = 0
        self._last_error: str | None = None
        self._health = SinkHealthLog(self.name)
        self.report: SinkReport | None = None
        if source.last_seq > self.acked:  # a restart, or ``trainbus sync``: start from the cursor
            self._start_catch_up(self.acked + 1)
        else:
            self._set_mode("live")

    # --- fed by the bus -----------------------------------------------------------------------

    def offer(self, events: Sequence[Event]) -> None:
        """Queue the events this sink accepts, or switch to catch-up when the queue is full."""
        if self._mode != "live":
            return
        queue = self._queue
        accepts = self.sink.accepts
        was_empty = not queue
        try:
            for event in events:
                if accepts(event):
                    if len(queue) >= self._queue_size:
                        self._start_catch_up(event.seq)
                        break
                    queue.append(event)
        except Exception as exc:  # an overridden accepts() with a bug
            log.error("sink_accepts_failed", sink=self.name, exc_info=exc)
            self._disable(f"accepts() raised {type(exc).__name__}: {exc}")
        if was_empty and queue:
            self._first_queued_at = time.monotonic()
        self._wake.set()

    def missed(self, first_seq: int) -> None:
        """Events from ``first_seq`` on were journaled but will not be offered: read them there."""
        if self._mode == "live":
            self._start_catch_up(first_seq)
            self._wake.set()

    def flush_now(self) -> None:
        """Send what is queued without waiting for the batch timer: the end of training is near
        (``Bus.begin_flush``), the final evaluation or save is about to run.

        The send first waits as long as the sink's last delivery took (at most its batch
        latency): a close that comes sooner finds everything in one batch and pays one round
        trip, not two in turn; a longer evaluation or save has the queue delivered while it
        runs. Events offered later are batched as usual.
        """
        if self._queue:
            self._flush_through = self._queue[-1].seq
            delay = min(self._write_s, self.sink.max_batch_latency)
            self._flush_at = time.monotonic() + delay
            self._wake.set()

    def begin_close(self, deadline: float) -> None:
        """Deliver what is left, giving up ``deadline`` seconds from now."""
        self._closing = True
        self._deadline = anyio.current_time() + deadline
        if self._scope is not None:
            self._scope.deadline = self._deadline
        self._wake.set()

    # --- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Open the sink, deliver until closed, close it and leave ``report``."""
        try:
            with anyio.CancelScope(deadline=self._deadline) as self._scope:
                try:
                    await self._run()
                except Exception as exc:  # a failure of ours for this sink: the others go on
                    log.error("sink_runtime_failed", sink=self.name, exc_info=exc)
                    self._disable(f"the sink runtime failed: {type(exc).__name__}: {exc}")
        finally:
            if self._opened:
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await self._close_sink()
            self._finish()

    async def _run(self) -> None:
        if await self._open():
            while (batch := await self._next_batch()) is not None:
                began = time.monotonic()
                await self._deliver(batch)
                self._write_s = time.monotonic() - began
                if self._mode == "disabled":
                    break
                await anyio.lowlevel.checkpoint()  # a sink that never awaits cannot hog the loop

    async def _open(self) -> bool:
        attempt = 0
        while True:
            try:
                await self.sink.open()
                self._opened = True
                self._health.delivered()
                return True
            except RetryableSinkError as exc:
                attempt += 1
                self._retried += 1
                self._retrying(exc, "open")
                await anyio.sleep(self._policy.delay(attempt, exc.retry_after))
            except PermanentSinkError as exc:
                self._disable(f"opening failed permanently: {exc}")
                return False
            except Exception as exc:
                self._crashes += 1
                log.error("sink_open_crashed", sink=self.name, exc_info=exc)
                if self._crashes >= self._policy.max_crashes:
                    self._disable(f"open() raised {type(exc).__name__}: {exc}")
                    return False
                self._health.enter("retrying", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(self._policy.delay(self._crashes))

    async def _next_batch(self) -> list[Event] | None:
        size = self.sink.max_batch_size
        latency = self.sink.max_batch_latency
        while self._mode != "disabled":
            if self._wake.is_set():
                self._wake = anyio.Event()
            queue = self._queue
            if queue:
                now = time.monotonic()
                wait = latency - (now - self._first_queued_at)
                if queue[0].seq <= self._flush_through:
                    wait = min(wait, self._flush_at - now)
                if len(queue) >= size or self._closing or self._mode != "live" or wait <= 0:
                    # What stays queued is older than now: keeping the timestamp errs early.
                    return [queue.popleft() for _ in range(min(size, len(queue)))]
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                continue
            if self._mode == "catch-up":
                await anyio.lowlevel.checkpoint()  # reading is synchronous: let the loop breathe
                batch = self._read_journal(size)
                if batch:
                    return batch
                continue
            if self._closing:
                return None
            if self._refill is not None and self._mode == "live":
                self._refill()
                if self._queue:
                    continue
            await self._wake.wait()
        return None

    def _read_journal(self, size: int) -> list[Event]:
        """Up to ``size`` accepted events from the journal; switches to live at its end."""
        batch: list[Event] = []
        accepts = self.sink.accepts
        last = self._source.last_seq
        fresh = False
        budget = _SCAN_BUDGET
        while len(batch) < size and self._next_seq <= last and budget:
            budget -= 1
            if self._records is None:
                offset = self._read_offset or self._source.offset_for(self._next_seq)
                self._records = JournalReader(self._source.path).records(offset)
                fresh = True
            record = next(self._records, None)
            if record is None:
                self._records = None
                if fresh:
                    log.error("journal_shorter_than_expected", sink=self.name, last_seq=last)
                    self._next_seq = last + 1
                continue
            fresh = False
            self._read_offset = record.end
            if record.seq < self._next_seq:
                continue
            self._next_seq = record.seq + 1
            event = _decode(self._source.path, record)
            if accepts(event):
                batch.append(event)
        if self._next_seq > last:
            self._stop_catch_up()
        return batch

    async def _deliver(self, batch: list[Event]) -> None:
        """Deliver ``batch``, narrowing a permanent refusal down to the points that caused it.

        The cursor moves past the batch only once every event in it is acknowledged or
        quarantined; a disabled sink or the close deadline leaves it where it was.
        """
        self._in_flight = batch
        self._held = {}
        self._accepted_seqs = None
        refused = await self._attempt(batch)
        if refused is not None:
            self._accepted_seqs = set()  # parts may share a seq: count events, not parts
            await self._narrow(batch, refused)
        if self._is_disabled():
            self._in_flight = ()
            return
        accepted = self._accepted_seqs
        self._delivered += len(batch) if accepted is None else len(accepted)
        self._record_quarantine(batch[-1].seq)
        self._in_flight = ()
        self.acked = batch[-1].seq
        self._cursors.write(self.name, self._durably_acked())

    async def _attempt(self, part: Sequence[Event]) -> PermanentSinkError | None:
        """Send ``part`` until it is accepted (``None``), refused for good, or the sink is
        disabled (``None`` too: the caller looks at the mode)."""
        attempt = 0
        crashes = 0
        while True:
            try:
                await self.sink.write(part)
            except RetryableSinkError as exc:
                self._hold(self.sink.take_quarantined())
                attempt += 1
                self._retried += 1
                self._retrying(exc, "write")
                await anyio.sleep(self._policy.delay(attempt, exc.retry_after))
            except PermanentSinkError as exc:
                self._hold(self.sink.take_quarantined())
                self._failed += 1
                self._last_error = str(exc)
                # The first refusal of a batch is news; those of its parts, while narrowing, are
                # summed up by ``sink_quarantined`` once the batch is through.
                report = log.debug if self._accepted_seqs is not None else log.warning
                report(
                    "sink_batch_rejected",
                    sink=self.name,
                    error=str(exc),
                    status=exc.status,
                    body=exc.body,
                    events=len(part),
                    first_seq=part[0].seq,
                    last_seq=part[-1].seq,
                )
                return exc
            except Exception as exc:
                self._hold(self.sink.take_quarantined())
                crashes += 1
                self._crashes += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.error("sink_crashed", sink=self.name, attempt=crashes, exc_info=exc)
                if crashes >= self._policy.max_crashes:
                    self._disable(f"write() raised {crashes} times in a row: {self._last_error}")
                    return None
                self._health.enter("retrying", error=self._last_error)
                await anyio.sleep(self._policy.delay(crashes))
            else:
                self._hold(self.sink.take_quarantined())
                if self._accepted_seqs is not None:
                    self._accepted_seqs.update(event.seq for event in part)
                self._health.delivered(attempts=attempt + crashes + 1)  # logs only a change
                return None

    async def _narrow(self, part: Sequence[Event], error: PermanentSinkError) -> None:
        """Send the sink's parts of a refused ``part`` one by one, recursing into refused ones;
        what cannot be split further is quarantined."""
        try:
            pieces = self.sink.split(part, error)
        except Exception as exc:  # an overridden split() with a bug: quarantine, never loop
            log.error("sink_split_failed", sink=self.name, exc_info=exc)
            pieces = ()
        if len(pieces) < 2:
            reason = f"refused: {error}"
            self._skipped += len(part)
            self._hold(QuarantinedPoint(seq=e.seq, key=_keys(e), reason=reason) for e in part)
            log.debug(
                "sink_points_quarantined",
                sink=self.name,
                error=str(error),
                status=error.status,
                seqs=[e.seq for e in part][:20],
            )
            return
        for piece in pieces:
            if not piece:
                continue
            refused = await self._attempt(piece)
            if refused is not None and not self._is_disabled():
                await self._narrow(piece, refused)
            if self._is_disabled():
                return

    def _is_disabled(self) -> bool:
        """A separate call, so type checkers do not assume an await left the mode unchanged."""
        return self._mode == "disabled"

    def _hold(self, points: Iterable[QuarantinedPoint]) -> None:
        """Keep the points found while delivering one batch; a retry finds them again."""
        for point in points:
            self._held.setdefault((point.seq, point.key), point)

    def _record_quarantine(self, through_seq: int) -> None:
        """Count and name the batch's quarantined points, before the cursor moves past them."""
        if not self._held:
            return
        points = sorted(self._held.values(), key=lambda p: p.seq)
        self._held = {}
        if self._quarantine.record(points, through_seq):
            self._health.enter("quarantined", points=len(points), total=self._quarantine.count)
            log.warning(
                "sink_quarantined",
                sink=self.name,
                points=len(points),
                total=self._quarantine.count,
                first=[_label(p) for p in points[:5]],
                reason=points[0].reason,
            )

    def _retrying(self, exc: RetryableSinkError, call: str) -> None:
        self._last_error = str(exc)
        self._health.enter("retrying", call=call, error=str(exc), retry_after=exc.retry_after)

    async def _close_sink(self) -> None:
        try:
            await self.sink.close()
        except Exception as exc:
            log.error("sink_close_failed", sink=self.name, exc_info=exc)

    # --- modes and reports --------------------------------------------------------------------

    def _set_mode(self, mode: SinkMode) -> None:
        if mode != self._mode:
            self._mode = mode
            log.info("sink_mode", sink=self.name, mode=mode, acknowledged_seq=self.acked)

    def _start_catch_up(self, first_missed_seq: int) -> None:
        self._next_seq = first_missed_seq
        self._read_offset = 0
        self._set_mode("catch-up")

    def _stop_catch_up(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None
        self._read_offset = 0
        self._set_mode("live")

    def _durably_acked(self) -> int:
        """Where the cursor file goes: the acknowledged seq, or less where the sink says its
        destination does not hold all of that for good yet (``Sink.durable_seq``)."""
        try:
            durable = self.sink.durable_seq()
        except Exception as exc:  # an overridden durable_seq() with a bug: trust nothing new
            log.error("sink_durable_seq_failed", sink=self.name, exc_info=exc)
            return min(self.acked, self._cursors.read(self.name))
        return self.acked if durable is None else min(self.acked, durable)

    def _disable(self, reason: str) -> None:
        self._last_error = reason
        self._set_mode("disabled")
        log.error("sink_disabled", sink=self.name, reason=reason)
        self._health.enter("failed", reason=reason)

    def _finish(self) -> None:
        disabled = self._mode == "disabled"
        caught_up = not disabled and not self._queue and not self._in_flight
        caught_up = caught_up and (
            self._mode != "catch-up" or self._next_seq > self._source.last_seq
        )
        if caught_up:
            self.acked = max(self.acked, self._source.last_seq)
        durable = self._durably_acked()
        self._cursors.write(self.name, durable, durable=True)
        undelivered = 0 if caught_up and durable == self.acked else self._count_after(durable)
        if self._records is not None:
            self._records.close()
            self._records = None
        self._queue.clear()
        self.report = SinkReport(
            name=self.name,
            delivered=self._delivered,
            skipped=self._skipped,
            undelivered=undelivered,
            acknowledged_seq=durable,
            disabled=disabled,
            last_error=self._last_error,
            quarantined=self._quarantine.count,
            quarantined_points=self._quarantine.points,
        )
        if not disabled:
            self._mode = "closed"
        self._health.enter(
            "closed", warning=undelivered > 0, delivered=self._delivered, undelivered=undelivered
        )
        if self._quarantine.count:
            log.warning(
                "sink_closed_with_quarantined_points",
                sink=self.name,
                quarantined=self._quarantine.count,
                named=[_label(p) for p in self.report.quarantined_points[:10]],
                file=str(self._quarantine.path) if self._quarantine.path else None,
            )

    def abandon(self, reason: str) -> SinkReport:
        """The report of a runner left running because its sink blocks the loop (from any thread).

        Everything after the last acknowledged ``seq`` counts as undelivered: it stays in the
        journal for ``trainbus sync``. A report the runner already left is returned as it is.
        """
        if self.report is None:
            self.report = SinkReport(
                name=self.name,
                delivered=self._delivered,
                skipped=self._skipped,
                undelivered=self._count_after(self.acked),
                acknowledged_seq=self.acked,
                disabled=True,
                last_error=reason,
            )
        return self.report

    def _count_after(self, seq: int) -> int:
        """Events after ``seq`` this sink would accept: what a later sync still has to send."""
        try:
            return self._count_in_journal(seq)
        except Exception as exc:  # an unreadable journal: report what memory still holds
            log.error("sink_backlog_uncounted", sink=self.name, exc_info=exc)
            return max(len(self._queue) + len(self._in_flight), self._source.last_seq - seq)

    def _count_in_journal(self, seq: int) -> int:
        """Counted up to the source's ``last_seq`` and no further: past it, a journal that another
        process still appends to (``trainbus.bus._follow``) may end in a record written only in
        part."""
        if not self._source.path.exists():
            return len(self._queue) + len(self._in_flight)
        last = self._source.last_seq
        if last <= seq:
            return 0
        every = self.sink.events is None and self.sink.every == 1
        count = 0
        path = self._source.path
        for record in JournalReader(path).records(self._source.offset_for(seq + 1)):
            if record.seq > seq and (every or self.sink.accepts(_decode(path, record))):
                count += 1
            if record.seq >= last:
                break
        return count

    def stats(self) -> SinkStats:
        """A snapshot for ``Bus.stats()``."""
        last = self._source.last_seq
        try:
            oldest = self._in_flight[0] if self._in_flight else self._queue[0]
        except IndexError:  # empty, or emptied by the loop thread while we looked
            oldest = None
        lag_seconds = max(0.0, time.time() - oldest.time) if oldest is not None else 0.0
        lag_events = len(self._queue) + len(self._in_flight)
        if self._mode in ("catch-up", "disabled"):
            lag_events = max(lag_events, last - self.acked)
        return SinkStats(
            name=self.name,
            mode=self._mode,
            delivered=self._delivered,
            retried=self._retried,
            failed=self._failed,
            skipped=self._skipped,
            crashes=self._crashes,
            acknowledged_seq=self.acked,
            lag_events=lag_events,
            lag_seconds=lag_seconds,
            last_error=self._last_error,
            quarantined=self._quarantine.count,
            queued=len(self._queue) + len(self._in_flight),
            health=self._health.state,
        )


def _label(point: QuarantinedPoint) -> str:
    """``seq:key`` for a log line, the key cut at 60 characters."""
    if point.key is None:
        return str(point.seq)
    key = point.key if len(point.key) <= 60 else point.key[:57] + "..."
    return f"{point.seq}:{key}"


def _keys(event: Event) -> str | None:
    """The metric names a refused ``Log`` event carried, so a report can say what was lost (a
    single name in full up to 1000 characters, a list of names cut at 200)."""
    if not isinstance(event, Log) or not event.logs:
        return None
    names = ", ".join(event.logs)
    limit = 1000 if len(event.logs) == 1 else 200
    return names if len(names) <= limit else names[: limit - 3] + "..."


async def replay(
    journal_path: str | os.PathLike[str],
    sinks: Sequence[Sink],
    *,
    cursor_dir: str | os.PathLike[str] | None,
    policy: RetryPolicy | None = None,
    deadline: float | None = None,
) -> dict[str, SinkReport]:
    """Deliver every journal event past each sink's cursor, as the live run would have.

    This is what ``trainbus sync RUN_DIR`` runs after the process that wrote the journal is gone:
    same filters, batching, retries and cursor updates, all sinks concurrently. ``deadline``
    (seconds, ``None`` for none) bounds the whole replay; what is left is in the reports.
    """
    source = _FinishedJournal(Path(journal_path))
    cursors = CursorStore(cursor_dir)
    runners = [SinkRunner(sink, source, cursors, policy=policy) for sink in sinks]
    async with anyio.create_task_group() as tg:
        for runner in runners:
            runner.begin_close(math.inf if deadline is None else deadline)
            tg.start_soon(runner.run)
    return {r.name: r.report for r in runners if r.report is not None}
