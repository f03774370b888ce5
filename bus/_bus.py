"""The bus: a training thread publishes, an event loop journals and fans out.

Two sides, one object. The *training side* (``emit``, ``publish``, ``barrier``, ``fsync``) is called
from whatever thread trains. Publishing appends to a deque under a lock that is never held across
I/O, and wakes the loop only when it is idle: once woken, the loop polls the deque every
``wake_interval`` for as long as events keep coming, and the flag that says "a wake-up is on its
way" stays set meanwhile, so a training thread that publishes steadily never pays for a wake-up (a
system call and a GIL hand-over) at all. The *loop side* (``async with bus``; written in
``trainbus.bus._draining``, a mixin of this class) drains the deque in bursts, appends each burst to
the journal with one write, and hands it to every sink runner and live subscription.

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

import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
import structlog

from trainbus.bus._dispatch import Hook, adispatch, dispatch
from trainbus.bus._draining import LoopSide
from trainbus.bus._errors import ConfigurationError, JournalError
from trainbus.bus._events import ALL_EVENT_TYPES, Event, EventBase
from trainbus.bus._journal import JournalWriter
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._runtime import DEFAULT_QUEUE_SIZE, SinkRunner
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport, SinkStats
from trainbus.bus._stream import Subscription

__all__ = ["Bus", "Hook", "Mark"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=EventBase)
C = TypeVar("C")
Mark = tuple[type[EventBase], float, int, float]
"""An envelope-only event stamped by its publisher: ``(event_type, time, global_step, epoch)``."""

_UNSTARTED_LIMIT: Final = 65536
_HIGH_WATER: Final = 32768
_MAX_PAUSE: Final = 0.001
DEFAULT_WAKE_INTERVAL: Final = 0.1
"""Seconds the loop lets a burst gather after its first event before draining it.

It is also the loop's polling period while events keep coming (see ``LoopSide._poll``): the loop
drains on its own timer, so publishing costs about a deque append. Each poll still takes the GIL
from the training thread for a moment, and on a small machine a hand-over costs the training
thread far more than the loop's own work: measured on 2 cores with a 3 ms training step, polling
every 20 ms made steps about 5% slower, every 100 ms about 2%. The price of a longer interval is
latency (sinks batch for 0.5 s or more anyway) and what a SIGKILL can lose: events published in
the last interval that never reached the journal. ``flush()``, ``fsync()`` (checkpoints), closing
and barriers with ``async def`` hooks drain at once regardless.
"""


_KNOWN_TYPES: Final = frozenset(ALL_EVENT_TYPES)
_now: Final = time.time
_thread_id: Final = threading.get_ident


def _unknown_type(event_type: type) -> ConfigurationError:
    return ConfigurationError(
        f"{event_type.__name__} is not one of the event types in bus.events.Event; the journal "
        "could not read it back. Add new event types to that union (with a new tag)."
    )


async def _await(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


class Bus(LoopSide):
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
        if close_deadline < 0:
            raise ConfigurationError(
                f"Bus(close_deadline=...) must be >= 0 seconds, got {close_deadline}."
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
        self.report: dict[str, SinkReport] | None = None
        """Per sink, how the run ended for it; set when the bus closes."""
        self.flow_control_pauses = 0
        """How many publishes paused because the loop was far behind (see ``_yield_to_loop``)."""
        self._queue_size = queue_size
        self._wake_interval = wake_interval
        self._policy = retry_policy
        bounded = self.journal_path is None and not self.sinks
        self._pending: deque[Event] = deque(maxlen=_UNSTARTED_LIMIT if bounded else None)
        self._lock = threading.Lock()
        self._next_seq = 0
        self._wake_scheduled = False
        self._call_soon: Callable[[Callable[[], None]], object] | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._wakeup = anyio.Event()
        self._nudge = anyio.Event()
        self._journal: JournalWriter | None = None
        self._tmpdir: str | None = None
        self._runners: list[SinkRunner] = []
        self._subscriptions: list[Subscription] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._drainer_scope: anyio.CancelScope | None = None
        self._failure: Exception | None = None
        """The journal write that failed; from then on publishing raises (see ``_refusal``)."""

    # --- training side: any thread ------------------------------------------------------------

    def emit(self, event_type: type[E], /, **fields: Any) -> E:
        """Build an event with this bus's envelope (run_id, seq, time, rank) and publish it."""
        if event_type not in _KNOWN_TYPES:
            raise _unknown_type(event_type)
        if self._failure is not None:
            raise self._refusal()
        pending = self._pending
        with self._lock:
            seq = self._next_seq
            self._next_seq = seq + 1
            event = event_type(run_id=self.run_id, seq=seq, time=_now(), rank=self.rank, **fields)
            pending.append(event)  # type: ignore[arg-type]  # checked against _KNOWN_TYPES
        self._after_append()
        return event

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
        if self._failure is not None:
            raise self._refusal()
        pending = self._pending
        run_id, rank = self.run_id, self.rank
        with self._lock:
            first = self._next_seq
            events = [
                event_type(  # an envelope-only member of Event
                    run_id=run_id,
                    seq=seq,
                    time=stamp,
                    rank=rank,
                    global_step=global_step,
                    epoch=epoch,
                )
                for seq, (event_type, stamp, global_step, epoch) in enumerate(marks, first)
            ]
            # seq first: an interrupt between the two lines leaves a gap, never a reused seq
            self._next_seq = first + len(events)
            pending.extend(events)  # type: ignore[arg-type]  # members of Event
        self._after_append()

    def _after_append(self) -> None:
        """Wake the loop if it sleeps; slow a flood down (see ``_yield_to_loop``)."""
        if not self._wake_scheduled:
            self._schedule_wake()
        if self._loop_thread == _thread_id():
            self._nudge.set()  # published on the loop itself: drain at its next turn, no poll
        if len(self._pending) > _HIGH_WATER:
            self._yield_to_loop()

    def publish(self, event: E) -> E:
        """Publish a ready-made event; it gets this bus's next ``seq``, ``run_id`` and ``rank``."""
        if type(event) not in _KNOWN_TYPES:
            raise _unknown_type(type(event))
        if self._failure is not None:
            raise self._refusal()
        with self._lock:
            seq = self._next_seq
            self._next_seq = seq + 1
            if event.seq != seq or event.run_id != self.run_id or event.rank != self.rank:
                event = msgspec.structs.replace(event, seq=seq, run_id=self.run_id, rank=self.rank)
            self._pending.append(cast(Event, event))
        self._after_append()
        return event

    def _refusal(self) -> JournalError:
        """Why publishing stopped: the journal failed, and what is not journaled is lost."""
        error = JournalError(
            f"The bus of run {self.run_id} could not write its journal {self.journal_path} "
            f"({self._failure}); it refuses new events instead of keeping them in memory."
        )
        error.__cause__ = self._failure
        return error

    def _schedule_wake(self) -> None:
        call_soon = self._call_soon
        if call_soon is None:
            return  # no loop yet (or any more): the events wait for the next start
        self._wake_scheduled = True
        try:
            call_soon(self._on_wake)
        except RuntimeError:  # the loop closed under us; nothing left to wake
            self._wake_scheduled = False

    def _yield_to_loop(self) -> None:
        """Flow control for floods: let the loop catch up, for at most a millisecond per call.

        Only reached when the loop is more than ``_HIGH_WATER`` events behind, which a training
        loop publishing a few events per step never is; a flood (or a loop starved of CPU) would
        otherwise grow the backlog without bound. Sleeping releases the GIL to the loop thread;
        this never waits on I/O and never waits long, so a stuck loop slows publishing down
        instead of hanging it.
        """
        if self._call_soon is None or threading.get_ident() == self._loop_thread:
            return
        if not self.flow_control_pauses:
            log.warning("bus_flow_control", backlog=len(self._pending), run_id=self.run_id)
        self.flow_control_pauses += 1
        deadline = time.monotonic() + _MAX_PAUSE
        while len(self._pending) > _HIGH_WATER // 2 and time.monotonic() < deadline:
            time.sleep(_MAX_PAUSE / 4)

    def _on_wake(self) -> None:
        self._wakeup.set()

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
        if threading.get_ident() == self._loop_thread:
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
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("Bus.flush() blocks; on the bus's loop use `await bus.drain()`.")
        anyio.from_thread.run(self.drain, token=token)

    def fsync(self) -> None:
        """Block until every event published so far is in the journal and durable on disk."""
        token = self._token
        if token is None:
            return
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("Bus.fsync() blocks; on the bus's loop use `await bus.afsync()`.")
        anyio.from_thread.run(self.afsync, token=token)

    def stats(self) -> dict[str, SinkStats]:
        """Per sink: counts, lag and mode. Safe to call from any thread (a best-effort snapshot)."""
        return {runner.name: runner.stats() for runner in list(self._runners)}
