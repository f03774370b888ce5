"""The bus: training threads publish, an event loop journals and fans out.

A ``Bus`` is two objects with one job each. Its ``Outbox`` (``trainbus.bus._outbox``) is the
training side's door: ``emit``, ``publish`` and ``publish_marks`` number events and leave them
there under a lock that is never held across I/O, and the outbox wakes the loop at most once per
burst (a steadily publishing training thread never pays for a wake-up; see that module). The bus
itself lives on the loop (``async with bus``): the outbox hands it each burst, and ``_fan_out``
appends the burst to the journal with one write and offers it to every sink runner and live
subscription. Around that the bus keeps the run's lifecycle, barriers, flush/fsync and stats.

Durability: the loop drains a burst at most ``wake_interval`` (100 ms) after its first event, and
a drained burst reaches the operating system in one ``os.write``. A barrier of plain hooks does not
wait for that (it would cost the training thread a round trip per event point); one with
``async def`` hooks drains first, since it goes to the loop anyway, so those hooks see every event
published before it. ``flush()`` waits for the drain from the training thread, and ``fsync()``
(checkpoints) and closing the bus also make the journal durable on disk.

The loop may run in a background thread (``trainer.train()`` in a plain script, through a
blocking portal) or be the host application's loop while training runs in a worker thread
(``train_async``); the training side works the same in both.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import structlog

from trainbus.bus._cursor import CursorStore
from trainbus.bus._dispatch import Hook, adispatch, dispatch
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Event, EventBase
from trainbus.bus._journal import JournalWriter
from trainbus.bus._numbers import check_seconds
from trainbus.bus._outbox import DEFAULT_WAKE_INTERVAL, Mark, Outbox
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._runtime import DEFAULT_QUEUE_SIZE, SinkRunner
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport, SinkStats
from trainbus.bus._stream import Subscription

__all__ = ["Bus", "Hook", "Mark"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=EventBase)
C = TypeVar("C")
B = TypeVar("B", bound="Bus")


async def _await(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


class Bus:
    """One run's (and one rank's) event bus. See ``docs/architecture.md`` for the contract.

    ``journal_path=None`` with sinks keeps the journal in a temporary directory removed at
    close (sinks still never drop events, but nothing is left for ``trainbus sync``); with
    neither a journal nor sinks the bus only serves barriers and live streams, and keeps at most
    the newest 65,536 events while no loop is running.
    """

    def __init__(
        self,
        *,
        run_id: str,
        rank: int = 0,
        journal_path: str | Path | None = None,
        cursor_dir: str | Path | None = None,
        sinks: Sequence[Sink] = (),
        queue_size: int = DEFAULT_QUEUE_SIZE,
        close_deadline: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
    ) -> None:
        if not run_id:
            raise ConfigurationError("Bus(run_id=...) must be a non-empty string.")
        if queue_size < 1:
            raise ConfigurationError(f"Bus(queue_size=...) must be at least 1, got {queue_size}.")
        if wake_interval < 0:
            raise ConfigurationError(
                f"Bus(wake_interval=...) must be >= 0 seconds, got {wake_interval}."
            )
        close_deadline = check_seconds("Bus(close_deadline=...)", close_deadline)
        names = [s.sink_name for s in sinks]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"Bus(sinks=...) needs distinct sink names (they name cursor files), got {names}."
            )
        self.run_id = run_id
        self.rank = rank
        self.journal_path = Path(journal_path) if journal_path is not None else None
        self.cursor_dir = Path(cursor_dir) if cursor_dir is not None else None
        self.sinks = [s for s in sinks if rank == 0 or not s.world_rank_zero_only]
        self.close_deadline = close_deadline
        self.report: dict[str, SinkReport] | None = None
        """Per sink, how the run ended for it; set when the bus closes."""
        self._queue_size = queue_size
        self._policy = retry_policy
        self._outbox = Outbox(
            run_id=run_id,
            rank=rank,
            deliver=self._fan_out,
            wake_interval=wake_interval,
            bounded=self.journal_path is None and not self.sinks,
        )
        # The training thread's calls go straight to the outbox: forwarding ``**fields`` through
        # the methods below would cost a quarter of a publish (about 200 of 850 ns, measured).
        # The methods stay for the documentation, for type checkers and for ``Bus.emit(bus, ...)``;
        # a subclass overriding them would be bypassed (the bus is not made to be subclassed).
        self.emit = self._outbox.emit  # type: ignore[method-assign]  # the same signature, bound once
        self.publish = self._outbox.publish  # type: ignore[method-assign]  # as above
        self.publish_marks = self._outbox.publish_marks  # type: ignore[method-assign]  # as above
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._journal: JournalWriter | None = None
        self._tmpdir: str | None = None
        self._runners: list[SinkRunner] = []
        self._subscriptions: list[Subscription] = []
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- training side: any thread ------------------------------------------------------------

    def emit(self, event_type: type[E], /, **fields: Any) -> E:
        """Build an event with this bus's envelope (run_id, seq, time, rank) and publish it."""
        return self._outbox.emit(event_type, **fields)

    def publish(self, event: E) -> E:
        """Publish a ready-made event; it gets this bus's next ``seq``, ``run_id`` and ``rank``."""
        return self._outbox.publish(event)

    def publish_marks(self, marks: list[Mark]) -> None:
        """Publish envelope-only events (``StepBegin``, ``StepEnd``, ...) the caller stamped.

        Each mark is ``(event_type, time, global_step, epoch)``, taken when the event happened; they
        get the next ``seq`` numbers in order, under one lock and with one wake-up check. The
        training loop stamps the events that end an optimizer step as it goes and publishes them
        together, before any callback runs and before it publishes anything else (see
        ``trainbus.trainer._trainer.Trainer._flush_marks``), so among the training thread's events
        ``seq`` order is still the order they happened; an event another thread publishes meanwhile
        gets a lower ``seq`` than marks stamped before it. The types are not checked: the caller
        passes members of ``trainbus.bus._events.Event`` only.
        """
        self._outbox.publish_marks(marks)

    @property
    def flow_control_pauses(self) -> int:
        """How many publishes paused because the loop was far behind (a flood, or a stuck loop)."""
        return self._outbox.flow_control_pauses

    def barrier(self, hooks: Sequence[Hook], args: Any, state: Any, control: C, **kwargs: Any) -> C:
        """Run control callbacks in order, as Hugging Face's callback handler does.

        Each hook is called as ``hook(args, state, control, **kwargs)``; a non-``None`` return
        replaces the control object the next hook sees, and the last one is returned. Plain
        hooks run inline on the calling thread; ``async def`` hooks are awaited on the bus's
        loop while the caller waits, after the loop drained what was published before them.
        Exceptions propagate, as in Hugging Face. (The loop is ``trainbus.bus._dispatch``.)
        """
        return dispatch(hooks, args, state, control, kwargs, self.settle)

    async def abarrier(
        self, hooks: Sequence[Hook], args: Any, state: Any, control: C, **kwargs: Any
    ) -> C:
        """``barrier`` for code already on the bus's loop (plain hooks then run on the loop)."""
        return await adispatch(hooks, args, state, control, kwargs, self._asettle)

    def settle(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await a hook's coroutine on the bus's loop (after a drain) and return its result.

        What ``barrier`` does with an ``async def`` hook, for a caller that dispatches hooks
        itself. Without a running loop the coroutine runs in place with `anyio.run`.
        """
        return self._await_on_loop(coro)

    async def _asettle(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._token is not None:
            await self.drain()
        return await coro

    def _await_on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        token = self._token
        if token is None:
            return anyio.run(_await, coro)
        if self._outbox.on_loop_thread():
            coro.close()
            raise RuntimeError(
                "Bus.barrier() was called on the bus's own event loop thread with an async hook; "
                "use `await bus.abarrier(...)` there."
            )
        return anyio.from_thread.run(self._drain_then_await, coro, token=token)

    async def _drain_then_await(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            await self.drain()
        except BaseException:
            coro.close()
            raise
        return await coro

    def flush(self) -> None:
        """Block until every event published so far is written to the journal (not fsynced).

        Rarely needed: the loop drains a burst within ``wake_interval`` of its first event and
        writes it to the operating system in one write, and closing the bus drains the rest.
        Call it where a crash of this process right afterwards must not lose them.
        """
        token = self._token
        if token is None:
            return
        if self._outbox.on_loop_thread():
            raise RuntimeError("Bus.flush() blocks; on the bus's loop use `await bus.drain()`.")
        anyio.from_thread.run(self.drain, token=token)

    def fsync(self) -> None:
        """Block until every event published so far is in the journal and durable on disk."""
        token = self._token
        if token is None:
            return
        if self._outbox.on_loop_thread():
            raise RuntimeError("Bus.fsync() blocks; on the bus's loop use `await bus.afsync()`.")
        anyio.from_thread.run(self.afsync, token=token)

    def stats(self) -> dict[str, SinkStats]:
        """Per sink: counts, lag and mode. Safe to call from any thread (a best-effort snapshot)."""
        return {runner.name: runner.stats() for runner in list(self._runners)}

    # --- loop side ----------------------------------------------------------------------------

    async def afsync(self) -> None:
        """``fsync`` for code on the bus's loop."""
        await self.drain()
        if self._journal is not None:
            await anyio.to_thread.run_sync(self._journal.fsync)

    async def drain(self) -> None:
        """Journal and fan out every event published so far (tests and checkpoints use it)."""
        await self._outbox.drain()

    def stream(self, *event_types: type[EventBase], max_buffer: int = 1024) -> Subscription:
        """Subscribe to events (all, or ``event_types``) as they are published; call on the loop.

        Bounded: a subscriber more than ``max_buffer`` events behind loses the oldest ones
        (``Subscription.dropped`` counts them). The stream ends when the bus closes.
        """
        subscription = Subscription(event_types, max_buffer, self._subscriptions.remove)
        self._subscriptions.append(subscription)
        return subscription

    def _fan_out(self, batch: list[Event]) -> None:
        """Journal a burst in one write, then offer it to every sink runner and subscription.

        Runners rely on nothing running in between: the journal's last seq and the last event
        offered are the same number whenever they look.
        """
        journal = self._journal
        if journal is not None:
            outbox = self._outbox
            if outbox.failure is not None:  # appending after a failed (maybe partial) write
                raise outbox.refusal()  # would bury a torn record under intact ones
            try:
                journal.append(batch)
            except Exception as exc:
                outbox.refuse(
                    exc,
                    f"The bus of run {self.run_id} could not write its journal "
                    f"{self.journal_path} ({exc}); it refuses new events instead of keeping them "
                    "in memory.",
                )
                raise
        for runner in self._runners:
            runner.offer(batch)
        for subscription in self._subscriptions:
            subscription.offer(batch)

    def _refill(self) -> None:
        """Fan out what is pending now, for a sink that ran dry before the next poll.

        On the loop thread, from a sink runner; a journal failure is kept by the outbox (the
        next drain and every publish report it) rather than raised into that sink's task.
        """
        if self._outbox.failure is not None:
            return
        batch = self._outbox.take()
        if batch:
            try:
                self._fan_out(batch)
            except Exception as exc:  # _fan_out made the outbox refuse from now on
                log.error("bus_refill_failed", run_id=self.run_id, exc_info=exc)

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
        self._token = anyio.lowlevel.current_token()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        await task_group.start(self._outbox.serve)
        for runner in self._runners:
            task_group.start_soon(runner.run, name=f"trainbus sink {runner.name}")
        log.info(
            "bus_started", run_id=self.run_id, rank=self.rank, sinks=[r.name for r in self._runners]
        )
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
        try:
            self._outbox.continue_after(self._journal.last_seq, path)
        except BaseException:
            self._discard_journal()
            raise

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
            self._outbox.stop()
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
        outbox = self._outbox
        if not len(outbox):
            return
        if outbox.failure is not None:
            note = "lost: the journal could not be written"
            count = len(outbox.take_all())
        elif self._journal is None:
            note = "kept in memory for the next start of this bus"
            count = len(outbox)
        else:
            late = outbox.take_all()
            self._journal.append(late)
            count = len(late)
            note = "lost with the temporary journal" if self._tmpdir else "kept in the journal"
        log.warning("bus_events_after_close", run_id=self.run_id, count=count, note=note)

    def _close_journal(self) -> None:
        self.report = {r.name: r.report for r in self._runners if r.report is not None}
        self._token = None
        self._outbox.detach()
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
