"""Helpers for testing code that publishes to, or consumes from, a bus.

They ship with the library (as ``structlog.testing`` does) so applications test their own sinks
and callbacks the way trainbus tests itself::

    sink = RecordingSink()
    sink.fail_retryable(times=2, retry_after=0.01)
    async with Bus(run_id="t", journal_path=tmp_path / "journal.tbj", sinks=[sink]) as bus:
        bus.emit(StepEnd, global_step=1)
    assert [e.global_step for e in sink.received] == [1]

Scripted behaviours apply to the next ``write`` calls in the order they were scripted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from trainbus.bus._bus import Bus
from trainbus.bus._errors import PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Event, EventBase
from trainbus.bus._sink import Sink
from trainbus.bus._stream import Subscription

__all__ = ["RecordingSink", "capture_events"]


@dataclass(frozen=True)
class _Step:
    """One scripted ``write`` outcome."""

    error: BaseException | None = None
    record_first: bool = False


class RecordingSink(Sink):
    """A sink that records every batch it accepts and can be scripted to misbehave.

    ``batches`` holds the accepted batches, ``received`` the events in delivery order and
    ``attempts`` every batch ``write`` was called with (failed ones included). Methods that
    script or release behaviour must be called on the bus's event loop.
    """

    def __init__(
        self,
        name: str = "recording",
        *,
        events: tuple[type[EventBase], ...] | None = None,
        every: int = 1,
        max_batch_size: int = 512,
        max_batch_latency: float = 0.0,
        world_rank_zero_only: bool = True,
    ) -> None:
        self.name = name
        self.events = events
        self.every = every
        self.max_batch_size = max_batch_size
        self.max_batch_latency = max_batch_latency
        self.world_rank_zero_only = world_rank_zero_only
        self.batches: list[list[Event]] = []
        self.attempts: list[list[Event]] = []
        self.opened = False
        self.closed = False
        self._script: deque[_Step] = deque()
        self._blocked = False
        # Events are made on the running loop when needed, so one sink can serve several runs.
        self._released: anyio.Event | None = None
        self._progress: anyio.Event | None = None

    # --- scripting ----------------------------------------------------------------------------

    def fail_retryable(self, times: int = 1, *, retry_after: float | None = None) -> None:
        """The next ``times`` writes raise ``RetryableSinkError`` (with ``retry_after``)."""
        for i in range(times):
            error = RetryableSinkError(
                f"scripted retryable failure {i + 1}/{times}", retry_after=retry_after
            )
            self._script.append(_Step(error=error))

    def fail_permanent(
        self, message: str = "rejected", *, status: int = 400, body: str = ""
    ) -> None:
        """The next write raises ``PermanentSinkError`` with the server's status and body."""
        self._script.append(_Step(error=PermanentSinkError(message, status=status, body=body)))

    def fail_unexpected(self, times: int = 1, *, error: Exception | None = None) -> None:
        """The next ``times`` writes raise a bug-like exception (``RuntimeError`` by default)."""
        for _ in range(times):
            self._script.append(_Step(error=error or RuntimeError("scripted sink bug")))

    def fail_after_accepting(self, error: BaseException, *, after: int = 0) -> None:
        """After ``after`` normal writes, a write records its batch and then raises ``error``.

        With a ``BaseException`` that is not an ``Exception`` this simulates the process dying
        between the remote's acknowledgement and the cursor write.
        """
        self._script.extend(_Step() for _ in range(after))
        self._script.append(_Step(error=error, record_first=True))

    def block(self) -> None:
        """Writes from now on wait, without returning, until ``release()``."""
        self._blocked = True

    def release(self) -> None:
        """Let blocked writes go on."""
        self._blocked = False
        if self._released is not None:
            self._released.set()

    # --- the sink -----------------------------------------------------------------------------

    async def open(self) -> None:
        self.opened = True

    async def write(self, batch: Sequence[Event]) -> None:
        self.attempts.append(list(batch))
        while self._blocked:
            self._released = anyio.Event()
            await self._released.wait()
        step = self._script.popleft() if self._script else _Step()
        if step.record_first:
            self._record(batch)
        if step.error is not None:
            raise step.error
        self._record(batch)

    async def close(self) -> None:
        self.closed = True

    def _record(self, batch: Sequence[Event]) -> None:
        self.batches.append(list(batch))
        if self._progress is not None:
            self._progress.set()

    # --- inspection ---------------------------------------------------------------------------

    @property
    def received(self) -> list[Event]:
        """Every accepted event, in delivery order."""
        return [event for batch in self.batches for event in batch]

    async def wait_for(self, count: int) -> None:
        """Wait until at least ``count`` events were accepted (bound it with ``fail_after``)."""
        while sum(len(b) for b in self.batches) < count:
            self._progress = anyio.Event()
            await self._progress.wait()


class _Capture(Subscription):
    """A subscription that appends straight into a list: unbounded, for tests only."""

    def __init__(self, bus: Bus, into: list[Event]) -> None:
        super().__init__((), None, bus._subscriptions.remove)
        self._into = into

    def offer(self, events: Sequence[Event]) -> None:
        self._into.extend(events)


@asynccontextmanager
async def capture_events(bus: Bus) -> AsyncIterator[list[Event]]:
    """Collect every event the running ``bus`` carries while the block runs, in order.

    Call on the bus's loop. On exit, events published before the exit (from any thread) are
    drained first, so the list is complete. Unlike ``Bus.stream`` nothing is ever dropped.
    """
    captured: list[Event] = []
    capture = _Capture(bus, captured)
    bus._subscriptions.append(capture)
    try:
        yield captured
    finally:
        await bus.drain()
        capture.close()
