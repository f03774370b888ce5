"""The bus's loop side: drain what the training side published, journal it, fan it out.

``LoopSide`` is a mixin of ``trainbus.bus._bus.Bus`` (one object, two sides: see that module's
docstring). Everything here runs on the bus's event loop: entering and leaving the bus (journal,
sink runners, the drainer task), draining the pending deque in bursts into the journal and to every
sink runner and live subscription, the polling that keeps a steadily publishing training thread from
paying for wake-ups, and the journal's end of life at close. The state it shares with the training
side is declared below; ``Bus.__init__`` sets all of it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import structlog

from trainbus.bus._cursor import CursorStore
from trainbus.bus._errors import JournalError
from trainbus.bus._events import Event, EventBase
from trainbus.bus._journal import JournalWriter
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._runtime import SinkRunner
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport
from trainbus.bus._stream import Subscription

__all__ = ["LoopSide"]

B = TypeVar("B", bound="LoopSide")

log = structlog.get_logger(__name__)

_BURST: Final = 512
_IDLE_POLLS: Final = 10
"""Empty polls (one second at the default interval) before the loop waits to be woken again."""


class LoopSide:
    """The loop side of ``trainbus.bus._bus.Bus`` (see the module docstring)."""

    run_id: str
    rank: int
    journal_path: Path | None
    cursor_dir: Path | None
    sinks: list[Sink]
    close_deadline: float
    report: dict[str, SinkReport] | None
    _queue_size: int
    _wake_interval: float
    _policy: RetryPolicy | None
    _pending: deque[Event]
    _lock: threading.Lock
    _next_seq: int
    _wake_scheduled: bool
    _call_soon: Callable[[Callable[[], None]], object] | None
    _token: anyio.lowlevel.EventLoopToken | None
    _loop_thread: int | None
    _wakeup: anyio.Event
    _nudge: anyio.Event
    _journal: JournalWriter | None
    _tmpdir: str | None
    _runners: list[SinkRunner]
    _subscriptions: list[Subscription]
    _task_group: anyio.abc.TaskGroup | None
    _drainer_scope: anyio.CancelScope | None
    _failure: Exception | None

    if TYPE_CHECKING:  # provided by the Bus

        def _refusal(self) -> JournalError: ...

    async def afsync(self) -> None:
        """``fsync`` for code on the bus's loop."""
        await self.drain()
        if self._journal is not None:
            await anyio.to_thread.run_sync(self._journal.fsync)

    async def drain(self) -> None:
        """Journal and fan out every event published so far (tests and checkpoints use it)."""
        while True:
            await self._drain_pending()
            self._wake_scheduled = False  # the next publish wakes the loop again
            if not self._pending:  # re-check: a publisher may have seen the flag still set
                return

    async def _drain_pending(self) -> None:
        pending = self._pending
        while pending:
            batch = [pending.popleft() for _ in range(min(len(pending), _BURST))]
            self._dispatch(batch)
            await anyio.lowlevel.checkpoint()

    def _refill(self) -> None:
        """Dispatch what is pending now, for a sink that ran dry before the next poll.

        On the loop thread, from a sink runner; a journal failure is kept in ``_failure`` (the
        next drain and every publish report it) rather than raised into that sink's task.
        """
        pending = self._pending
        if not pending or self._failure is not None:
            return
        batch = [pending.popleft() for _ in range(min(len(pending), _BURST))]
        try:
            self._dispatch(batch)
        except Exception as exc:  # _dispatch recorded it in _failure
            log.error("bus_refill_failed", run_id=self.run_id, exc_info=exc)

    async def _poll(self) -> None:
        """Drain every ``wake_interval`` for as long as events keep coming.

        A wake-up from another thread costs the publisher a system call and usually a hand-over
        of the GIL to the loop, in the middle of a training step. While training publishes
        steadily the loop therefore polls on its own timer instead, and publishers see the
        "wake-up on its way" flag still set and never wake it. After ``_IDLE_POLLS`` empty
        polls the loop goes back to waiting, and the caller's ``drain()`` clears the flag.
        A publisher on the loop's own thread (an async service) nudges the poll instead: it
        costs no GIL hand-over there, and its events need not wait for the timer.
        """
        idle = 0
        while idle < _IDLE_POLLS:
            with anyio.move_on_after(self._wake_interval):
                await self._nudge.wait()
            self._nudge = anyio.Event()
            if self._pending:
                idle = 0
                await self._drain_pending()
            else:
                idle += 1

    def _dispatch(self, batch: list[Event]) -> None:
        if self._journal is not None:
            if self._failure is not None:  # appending after a failed (maybe partial) write
                raise self._refusal()  # would bury a torn record under intact ones
            try:
                self._journal.append(batch)
            except Exception as exc:
                self._failure = exc
                raise
        for runner in self._runners:
            runner.offer(batch)
        for subscription in self._subscriptions:
            subscription.offer(batch)

    async def _drain_forever(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as self._drainer_scope:
            task_status.started()
            try:
                while True:
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    if self._wake_interval:
                        await self._poll()  # publishers see _wake_scheduled set meanwhile
                    await self.drain()
            except Exception as exc:  # the journal cannot be written: the run must hear of it
                log.error("bus_drain_failed", run_id=self.run_id, exc_info=exc)
                raise

    def stream(self, *event_types: type[EventBase], max_buffer: int = 1024) -> Subscription:
        """Subscribe to events (all, or ``event_types``) as they are published; call on the loop.

        Bounded: a subscriber more than ``max_buffer`` events behind loses the oldest ones
        (``Subscription.dropped`` counts them). The stream ends when the bus closes.
        """
        subscription = Subscription(event_types, max_buffer, self._subscriptions.remove)
        self._subscriptions.append(subscription)
        return subscription

    async def __aenter__(self: B) -> B:
        if self._token is not None:
            raise RuntimeError("This Bus is already running; a bus is entered once at a time.")
        self._open_journal()
        try:
            cursors = CursorStore(self.cursor_dir)
            if self._journal is not None:
                self._runners = [
                    SinkRunner(
                        s,
                        self._journal,
                        cursors,
                        policy=self._policy,
                        queue_size=self._queue_size,
                        refill=self._refill,
                    )
                    for s in self.sinks
                ]
        except BaseException:  # a bad cursor file: leave nothing open behind the error
            self._runners = []
            self._discard_journal()
            raise
        token = anyio.lowlevel.current_token()
        native = token.native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            self._call_soon = native.call_soon_threadsafe
        else:
            self._call_soon = native.run_sync_soon  # type: ignore[attr-defined]  # a TrioToken
        self._token = token
        self._loop_thread = threading.get_ident()
        self._wakeup = anyio.Event()
        self._nudge = anyio.Event()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        await task_group.start(self._drain_forever)
        for runner in self._runners:
            task_group.start_soon(runner.run, name=f"trainbus sink {runner.name}")
        log.info(
            "bus_started", run_id=self.run_id, rank=self.rank, sinks=[r.name for r in self._runners]
        )
        self._wakeup.set()  # events published before the start
        return self

    def _discard_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _open_journal(self) -> None:
        path = self.journal_path
        if path is None and self.sinks:
            self._tmpdir = tempfile.mkdtemp(prefix="trainbus-")
            path = Path(self._tmpdir) / "journal.tbj"
        if path is None:
            return
        self._journal = JournalWriter.open(path)
        last = self._journal.last_seq
        with self._lock:
            if last >= self._next_seq:
                if self._next_seq > 0:
                    self._journal.close()
                    raise JournalError(
                        f"The journal {path} already holds events up to seq {last}, but this bus "
                        f"published seq 0..{self._next_seq - 1} before it started."
                    )
                self._next_seq = last + 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        if task_group is None:
            raise RuntimeError("Bus.__aexit__ was called without a matching __aenter__.")
        try:
            with anyio.CancelScope(shield=True):
                await self.drain()
        finally:  # even when the last drain failed: the tasks must end or the close hangs
            for runner in self._runners:
                runner.begin_close(self.close_deadline)
            for subscription in list(self._subscriptions):
                subscription.close()
            if self._drainer_scope is not None:
                self._drainer_scope.cancel()
            self._call_soon = None
            try:
                await task_group.__aexit__(None, None, None)
            finally:
                self._journal_late_events()
                self._close_journal()

    def _journal_late_events(self) -> None:
        """Keep what was published after the final drain (a thread racing the close).

        The sinks have finished by now, so these events reach the journal only, for a later
        ``trainbus sync``. A bus without a journal keeps them for its next start, as it keeps
        events published before the first one; a temporary journal is removed with them.
        """
        pending = self._pending
        if not pending:
            return
        if self._failure is not None:
            note = "lost: the journal could not be written"
            count = len(pending)
            pending.clear()
        elif self._journal is None:
            note = "kept in memory for the next start of this bus"
            count = len(pending)
        else:
            late = [pending.popleft() for _ in range(len(pending))]
            self._journal.append(late)
            count = len(late)
            note = "lost with the temporary journal" if self._tmpdir else "kept in the journal"
        log.warning("bus_events_after_close", run_id=self.run_id, count=count, note=note)

    def _close_journal(self) -> None:
        self.report = {r.name: r.report for r in self._runners if r.report is not None}
        self._token = None
        self._loop_thread = None
        self._task_group = None
        if self._journal is not None:
            self._journal.close()
        left = {name: r.undelivered for name, r in self.report.items() if r.undelivered}
        if left:
            where = "lost with the temporary journal" if self._tmpdir else "kept in the journal"
            log.warning("bus_closed_with_backlog", undelivered=left, note=where)
        log.info("bus_closed", run_id=self.run_id, rank=self.rank)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._journal = None
