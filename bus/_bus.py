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

The loop may run in a background thread (``trainer.train()`` in a plain script) or be the host
application's loop while training runs in a worker thread (``train_async``); the training side
works the same in both.

A sink that blocks the loop (a ``time.sleep`` or a synchronous client in ``write`` or ``close``)
stops everything on it, so the journal does not depend on the loop: appending a burst happens
under the outbox's delivery lock, by whichever thread gets there. Normally that is the loop; a
``flush()`` or ``fsync()`` (checkpoints) writes from the training thread itself; and when the loop
has not answered for ``stall_after`` seconds, the watchdog (``trainbus.bus._watchdog``) names the
sink in one warning and journals from its own thread every ``wake_interval`` until the loop is
back. Bursts journaled off the loop are offered to the sinks by the loop, in ``seq`` order, when
it next runs (at most one queue's worth kept in memory; past that the sinks read the journal).
Runners see the journal only up to the last event offered, so nothing reaches a sink twice.
What still needs the loop waits for it: barriers with ``async def`` hooks and the close itself;
``abandon()`` ends a close that a blocked loop cannot (``trainbus.trainer._launcher``).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
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
from trainbus.bus._metrics import BusMetrics, journal_bytes
from trainbus.bus._numbers import check_seconds
from trainbus.bus._outbox import DEFAULT_WAKE_INTERVAL, CallSoon, Mark, Outbox, loop_call_soon
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._run_context import RunContext
from trainbus.bus._runtime import DEFAULT_QUEUE_SIZE, SinkRunner
from trainbus.bus._segmented import (
    JournalSettings,
    SegmentedJournalWriter,
    acknowledged_by_all,
    open_journal,
)
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport, SinkStats
from trainbus.bus._stream import Subscription
from trainbus.bus._watchdog import LoopWatchdog, sink_call_on_thread

__all__ = ["Bus", "Hook", "Mark"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=EventBase)
C = TypeVar("C")
B = TypeVar("B", bound="Bus")


DEFAULT_STALL_AFTER = 5.0
"""Seconds the loop may leave the watchdog's ping unanswered before it counts as blocked."""


async def _await(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


class _Offered:
    """The journal as the sink runners see it: up to the last event the bus offered them.

    Bursts journaled off the loop wait to be offered; a runner catching up must not read them
    from the journal first and then be offered them again.
    """

    def __init__(self, bus: Bus, journal: JournalWriter | SegmentedJournalWriter) -> None:
        self._bus = bus
        self._journal = journal
        self.path = journal.path

    @property
    def last_seq(self) -> int:
        return self._bus._offered_seq

    def offset_for(self, seq: int) -> int:
        with self._bus._outbox.delivering:  # the index grows under this lock, maybe off the loop
            return self._journal.offset_for(seq)


class Bus:
    """One run's (and one rank's) event bus. See ``docs/architecture.md`` for the contract.

    ``journal_path=None`` with sinks keeps the journal in a temporary directory removed at
    close (sinks still never drop events, but nothing is left for ``trainbus sync``); with
    neither a journal nor sinks the bus only serves barriers and live streams, and keeps at most
    the newest 65,536 events while no loop is running. ``journal_path`` names a directory of
    segments (an existing single-file journal is appended to as it is); ``journal_settings``
    (default: ``TRAINBUS_JOURNAL_*``) says when segments rotate and what happens to those every
    sink has acknowledged (``trainbus.bus._segmented``).
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
        journal_settings: JournalSettings | None = None,
        stall_after: float = DEFAULT_STALL_AFTER,
        context: RunContext | None = None,
        journal_filter: Callable[[Event], bool] | None = None,
    ) -> None:
        """``stall_after``: seconds the loop may not answer before the watchdog journals for it
        and names the sink that blocks it (see the module docstring). ``context``: what the
        launcher decided about the run (default: no resolved ``report_to``, the final model
        wanted when one of ``sinks`` wants it). ``journal_filter``: the events the journal
        keeps (default: all), for a rank whose journal is only a record of what went wrong;
        only for a bus without sinks, since a sink catching up reads every event back from the
        journal. Live subscriptions and barriers still see every event."""
        if not run_id:
            raise ConfigurationError("Bus(run_id=...) must be a non-empty string.")
        if queue_size < 1:
            raise ConfigurationError(f"Bus(queue_size=...) must be at least 1, got {queue_size}.")
        if wake_interval < 0:
            raise ConfigurationError(
                f"Bus(wake_interval=...) must be >= 0 seconds, got {wake_interval}."
            )
        close_deadline = check_seconds("Bus(close_deadline=...)", close_deadline)
        if not (math.isfinite(stall_after) and stall_after > 0):
            raise ConfigurationError(
                f"Bus(stall_after=...) must be a finite number of seconds > 0, got {stall_after}."
            )
        if journal_filter is not None and any(
            rank == 0 or not s.world_rank_zero_only for s in sinks
        ):
            raise ConfigurationError(
                "Bus(journal_filter=...) needs a bus without sinks: a sink catching up reads "
                "every event back from the journal."
            )
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
        self.stall_after = stall_after
        self.report: dict[str, SinkReport] | None = None
        """Per sink, how the run ended for it; set when the bus closes."""
        self.context = context or RunContext.of_sinks(self.sinks)
        """The launcher's answers about the run, which the trainer reads (see
        ``trainbus.bus._run_context``); the launcher may replace it between two calls of a run."""
        self._journal_filter = journal_filter
        self._queue_size = queue_size
        self._journal_settings = journal_settings
        self._outbox_interval = wake_interval
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
        self._journal: JournalWriter | SegmentedJournalWriter | None = None
        self._tmpdir: str | None = None
        self._runners: list[SinkRunner] = []
        self._subscriptions: list[Subscription] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._watchdog: LoopWatchdog | None = None
        self._loop_thread: int | None = None
        self._call_soon: CallSoon | None = None
        # Journaled off the loop, not yet offered (under the outbox's delivery lock):
        self._unoffered: deque[list[Event]] = deque()
        self._unoffered_count = 0
        self._gap: int | None = None  # first seq journaled but no longer kept for offering
        self._offer_scheduled = False
        self._offered_seq = -1
        self._abandoned = False
        self._journaled = 0  # events appended by this bus (under the delivery lock)
        self._flush_listeners: list[Callable[[], None]] = []

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

        An ``async def`` hook needs the loop: while a sink blocks it, the barrier waits until the
        sink lets go (the watchdog names that sink); the journal keeps being written meanwhile.
        Plain hooks never wait for the loop.
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
        if self._journal is not None:  # written from here: a blocked loop cannot hold this up
            self._outbox.deliver_now()
        else:
            anyio.from_thread.run(self.drain, token=token)

    def begin_flush(self) -> None:
        """Tell the sinks to deliver what was published so far now, not when their batch timer
        says; never blocks, and the bus goes on accepting events.

        The trainer calls it once the last training step's events are out and the final
        evaluation or save is about to run, so that delivery overlaps them instead of following
        them. Later events are batched as usual and the close still waits for the sinks (or
        their deadline). Each ``on_begin_flush`` listener is then called on the loop.
        """
        call_soon = self._call_soon
        if call_soon is None or self._journal is None or self._outbox.failure is not None:
            return  # not running, or nothing to deliver to (no journal: no sink runners)
        self._outbox.deliver_now()  # journaled from here: offered to the runners on the loop
        if self._outbox.on_loop_thread():
            self._flush_runners()
            return
        # After the offer ``deliver_now`` scheduled; a loop closed meanwhile delivered it all.
        with contextlib.suppress(RuntimeError):
            call_soon(self._flush_runners)

    def on_begin_flush(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the loop whenever ``begin_flush`` is asked (the orchestrator
        tells the sink process); a listener that raises is logged and the others still run."""
        self._flush_listeners.append(listener)

    def _flush_runners(self) -> None:  # on the loop
        with self._outbox.delivering:
            self._offer_journaled()
        for runner in self._runners:
            runner.flush_now()
        for listener in self._flush_listeners:
            try:
                listener()
            except Exception as exc:
                log.error("bus_flush_listener_failed", run_id=self.run_id, exc_info=exc)

    def fsync(self) -> None:
        """Block until every event published so far is in the journal and durable on disk."""
        token = self._token
        if token is None:
            return
        if self._outbox.on_loop_thread():
            raise RuntimeError("Bus.fsync() blocks; on the bus's loop use `await bus.afsync()`.")
        journal = self._journal
        if journal is None:
            anyio.from_thread.run(self.afsync, token=token)
            return
        self._outbox.deliver_now()  # from here: a blocked loop cannot hold a checkpoint up
        journal.fsync()

    def stats(self) -> dict[str, SinkStats]:
        """Per sink: counts, lag and mode. Safe to call from any thread (a best-effort snapshot)."""
        return {runner.name: runner.stats() for runner in list(self._runners)}

    def metrics(self) -> BusMetrics:
        """The bus's own metrics and every sink's ``stats()``, from any thread, open or closed
        (``trainbus.bus._metrics``); the sinks of a sink process are the orchestrator's to add."""
        outbox = self._outbox
        journal = self._journal
        return BusMetrics(
            run_id=self.run_id,
            rank=self.rank,
            time=time.time(),
            running=self._token is not None,
            published=outbox.published,
            journaled=self._journaled,
            last_seq=outbox.last_seq,
            queued=len(outbox),
            journal_bytes=journal_bytes(journal.path if journal is not None else self.journal_path),
            publish_pauses=outbox.flow_control_pauses,
            sinks=tuple(self.stats().values()),
        )

    # --- loop side ----------------------------------------------------------------------------

    async def afsync(self) -> None:
        """``fsync`` for code on the bus's loop."""
        await self.drain()
        if self._journal is not None:
            await anyio.to_thread.run_sync(self._journal.fsync)

    async def drain(self) -> None:
        """Journal and fan out every event published so far (tests and checkpoints use it)."""
        await self._outbox.drain()
        with self._outbox.delivering:
            self._offer_journaled()

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

        Called with the outbox's delivery lock held, on any thread. Off the loop the burst is
        kept for the loop to offer (``_keep_for_loop``); on it, what was kept goes first.
        """
        journal = self._journal
        if journal is not None:
            outbox = self._outbox
            if outbox.failure is not None:  # appending after a failed (maybe partial) write
                raise outbox.refusal()  # would bury a torn record under intact ones
            try:
                self._append(journal, batch)
            except Exception as exc:
                outbox.refuse(
                    exc,
                    f"The bus of run {self.run_id} could not write its journal "
                    f"{self.journal_path} ({exc}); it refuses new events instead of keeping them "
                    "in memory.",
                )
                raise
        if not self._outbox.on_loop_thread():
            self._keep_for_loop(batch)
            return
        if self._unoffered or self._gap is not None:
            self._offer_journaled()
        self._offer(batch)

    def _append(self, journal: JournalWriter | SegmentedJournalWriter, batch: list[Event]) -> None:
        """Journal ``batch``, or the part of it ``journal_filter`` keeps."""
        keep = self._journal_filter
        kept = batch if keep is None else [event for event in batch if keep(event)]
        journal.append(kept)
        self._journaled += len(kept)

    def _offer(self, batch: list[Event]) -> None:
        self._offered_seq = batch[-1].seq
        for runner in self._runners:
            runner.offer(batch)
        for subscription in self._subscriptions:
            subscription.offer(batch)

    def _keep_for_loop(self, batch: list[Event]) -> None:
        """Keep a burst journaled off the loop until the loop offers it (delivery lock held).

        At most one queue's worth (``queue_size`` events) is kept: past that the runners are
        told to read the rest from the journal, and live subscriptions miss it.
        """
        if self._gap is None and self._unoffered_count + len(batch) <= self._queue_size:
            self._unoffered.append(batch)
            self._unoffered_count += len(batch)
        elif self._gap is None:
            self._gap = batch[0].seq
        call_soon = self._call_soon
        if not self._offer_scheduled and call_soon is not None:
            self._offer_scheduled = True
            try:
                call_soon(self._offer_kept)
            except RuntimeError:  # the loop has closed; the close offers nothing more
                self._offer_scheduled = False

    def _offer_kept(self) -> None:  # on the loop
        with self._outbox.delivering:
            self._offer_scheduled = False
            self._offer_journaled()

    def _offer_journaled(self) -> None:
        """Offer what was journaled off the loop, oldest first (on the loop, delivery lock held)."""
        while self._unoffered:
            self._offer(self._unoffered.popleft())
        self._unoffered_count = 0
        gap, self._gap = self._gap, None
        if gap is not None and self._journal is not None:
            self._offered_seq = self._journal.last_seq
            for runner in self._runners:
                runner.missed(gap)
            log.warning(
                "bus_offers_from_journal",
                run_id=self.run_id,
                first_seq=gap,
                last_seq=self._offered_seq,
                note="journaled while the loop was blocked; sinks read them from the journal, "
                "live subscriptions miss them",
            )

    def _refill(self) -> None:
        """Fan out what is pending now, for a sink that ran dry before the next poll.

        On the loop thread, from a sink runner; a journal failure is kept by the outbox (the
        next drain and every publish report it) rather than raised into that sink's task.
        """
        if self._outbox.failure is not None:
            return
        if len(self._outbox):
            try:
                self._outbox.deliver_now(bursts=1)
            except Exception as exc:  # _fan_out made the outbox refuse from now on
                log.error("bus_refill_failed", run_id=self.run_id, exc_info=exc)

    async def __aenter__(self: B) -> B:
        if self._token is not None:
            raise RuntimeError("This Bus is already running; a bus is entered once at a time.")
        self._open_journal()
        try:
            cursors = CursorStore(self.cursor_dir)
            if self._journal is not None:
                self._offered_seq = self._journal.last_seq
                source = _Offered(self, self._journal)
                self._runners = [
                    SinkRunner(
                        s,
                        source,
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
        self._loop_thread = threading.get_ident()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        await task_group.start(self._outbox.serve)
        self._call_soon = loop_call_soon()
        for runner in self._runners:
            task_group.start_soon(runner.run, name=f"trainbus sink {runner.name}")
        if self._runners:
            self._watchdog = LoopWatchdog(
                call_soon=self._call_soon,
                loop_thread=self._loop_thread,
                stall_after=self.stall_after,
                stalled_period=self._outbox_interval,
                on_stall=self._outbox.deliver_now,
                run_id=self.run_id,
            )
            self._watchdog.start()
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
        self._journal = open_journal(
            path, settings=self._journal_settings, acknowledged=self._acknowledged
        )
        try:
            self._outbox.continue_after(self._journal.last_seq, path)
        except BaseException:
            self._discard_journal()
            raise

    def _acknowledged(self) -> int:
        """The last seq every sink (here or in a sink process) acknowledged: journal segments up
        to it may be compressed."""
        last = self._journal.last_seq if self._journal is not None else -1
        return acknowledged_by_all((r.acked for r in self._runners), self.cursor_dir, last)

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
                self._call_soon = None
                if self._watchdog is not None:
                    self._watchdog.stop()
                if not self._abandoned:  # else abandon() closed the journal and reported
                    with self._outbox.delivering:
                        self._journal_late_events()
                    self._close_journal()

    @property
    def loop_stalled(self) -> bool:
        """Whether the watchdog finds the loop blocked now (by a sink; see the module docstring)."""
        return self._watchdog is not None and self._watchdog.stalled

    def abandon(self, reason: str) -> dict[str, SinkReport]:
        """Close the journal from this thread while a blocked loop cannot close the bus.

        For the code that waits for the close on another thread (``launch_blocking``) once the
        close deadline has passed and ``loop_stalled`` says the loop does not answer: every event
        published so far is journaled and made durable, each sink's report counts what it has not
        acknowledged as undelivered (kept in the journal for ``trainbus sync``), and later
        publishes are refused. The loop's own close, should the sink ever return, then leaves the
        journal and the report alone. The loop's thread and the sink are left as they are.
        """
        outbox = self._outbox
        if self._watchdog is not None:
            self._watchdog.stop()
        with outbox.delivering:  # a burst the loop was delivering is complete in the journal
            self._abandoned = True
            self._call_soon = None
            late = outbox.take_all()
            if self._journal is not None and late and outbox.failure is None:
                self._append(self._journal, late)
            outbox.refuse(
                RuntimeError(reason), f"The bus of run {self.run_id} was closed: {reason}."
            )
            if self._journal is not None:
                self._journal.close()  # fsynced; the loop appends nothing more (refused)
            self._offered_seq = self._journal.last_seq if self._journal is not None else -1
        self.report = {runner.name: runner.abandon(reason) for runner in self._runners}
        blocked = sink_call_on_thread(self._loop_thread)
        left = {name: r.undelivered for name, r in self.report.items() if r.undelivered}
        log.warning(
            "bus_close_abandoned",
            run_id=self.run_id,
            reason=reason,
            sink=blocked[0] if blocked else None,
            call=blocked[1] if blocked else None,
            undelivered=left,
            note="kept in the journal for trainbus sync"
            if not self._tmpdir
            else "lost with the temporary journal",
        )
        return self.report

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
            self._append(self._journal, late)
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
