"""The outbox: where training threads leave events for the bus's loop, and how the loop is woken.

Publishing (``emit``, ``publish``, ``publish_marks``, from any thread) numbers each event and
appends it to a deque under a lock that is never held across I/O, and wakes the loop only when it
is idle: once woken, the loop polls the deque every ``wake_interval`` for as long as events keep
coming, and the flag that says "a wake-up is on its way" stays set meanwhile, so a training thread
that publishes steadily never pays for a wake-up (a system call and a GIL hand-over) at all.

On the loop, ``serve`` takes what is pending in bursts and hands each burst to ``deliver`` (the
bus's fan-out: journal, sinks, live streams); ``drain`` does the same at once, for whoever must
know that everything published so far was delivered. ``deliver_now`` does it from any other
thread, for when the loop cannot: a sink blocked it, or the training thread needs the journal on
disk (a checkpoint) without a round trip through the loop. Taking a burst and delivering it
happen under one lock (never taken by publishers), so bursts reach ``deliver`` in ``seq`` order
whoever delivers them. The outbox knows nothing of journals or sinks: after a failed journal write
the bus tells it to ``refuse`` further events.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import structlog

from trainbus.bus._errors import ConfigurationError, JournalError
from trainbus.bus._events import ALL_EVENT_TYPES, Event, EventBase

__all__ = ["DEFAULT_WAKE_INTERVAL", "CallSoon", "Mark", "Outbox", "loop_call_soon"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=EventBase)
Mark = tuple[type[EventBase], float, int, float]
"""An envelope-only event stamped by its publisher: ``(event_type, time, global_step, epoch)``."""
CallSoon = Callable[[Callable[[], None]], object]
"""Schedules a callback on a loop from any thread, without waiting for the loop."""

DEFAULT_WAKE_INTERVAL: Final = 0.1
"""Seconds the loop lets a burst gather after its first event before draining it.

It is also the loop's polling period while events keep coming (see ``Outbox._poll``): the loop
drains on its own timer, so publishing costs about a deque append. Each poll still takes the GIL
from the training thread for a moment, and on a small machine a hand-over costs the training
thread far more than the loop's own work: measured on 2 cores with a 3 ms training step, polling
every 20 ms made steps about 5% slower, every 100 ms about 2%. The price of a longer interval is
latency (sinks batch for 0.5 s or more anyway) and what a SIGKILL can lose: events published in
the last interval that never reached the journal. ``flush()``, ``fsync()`` (checkpoints), closing
and barriers with ``async def`` hooks drain at once regardless.
"""

UNSTARTED_LIMIT: Final = 65536
"""Most events a bounded outbox (no journal, no sinks) keeps while no loop drains it."""
_HIGH_WATER: Final = 32768
_MAX_PAUSE: Final = 0.001
_BURST: Final = 512
_IDLE_POLLS: Final = 10
"""Empty polls (one second at the default interval) before the loop waits to be woken again."""

_KNOWN_TYPES: Final = frozenset(ALL_EVENT_TYPES)
_now: Final = time.time
_thread_id: Final = threading.get_ident


def loop_call_soon() -> CallSoon:
    """The running loop's thread-safe ``call_soon`` (asyncio or trio); call on the loop.

    Unlike ``anyio.from_thread``, it never waits for the loop to answer, so a thread can hand the
    loop work even while something blocks it.
    """
    token = anyio.lowlevel.current_token().native_token
    if isinstance(token, asyncio.AbstractEventLoop):
        return token.call_soon_threadsafe
    call_soon: CallSoon = token.run_sync_soon  # type: ignore[attr-defined]  # a TrioToken
    return call_soon


def _unknown_type(event_type: type) -> ConfigurationError:
    return ConfigurationError(
        f"{event_type.__name__} is not one of the event types in bus.events.Event; the journal "
        "could not read it back. Add new event types to that union (with a new tag)."
    )


class Outbox:
    """Pending events between the threads that publish and the loop that delivers them.

    ``deliver`` is called on the loop with each burst (at most 512 events, ``seq`` increasing);
    what it raises ends ``serve`` and propagates out of ``drain``. ``bounded`` keeps only the
    newest ``UNSTARTED_LIMIT`` events while no loop runs (a bus with nothing to deliver to).
    """

    def __init__(
        self,
        *,
        run_id: str,
        rank: int,
        deliver: Callable[[list[Event]], None],
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
        bounded: bool = False,
    ) -> None:
        self.run_id = run_id
        self.rank = rank
        self.flow_control_pauses = 0
        """How many publishes paused because the loop was far behind (see ``_yield_to_loop``)."""
        self.failure: Exception | None = None
        """Why publishing is refused (see ``refuse``); ``None`` while it is not."""
        self._refusal_reason = ""
        self._deliver = deliver
        self._wake_interval = wake_interval
        self._pending: deque[Event] = deque(maxlen=UNSTARTED_LIMIT if bounded else None)
        self._lock = threading.Lock()
        self._next_seq = 0
        self._first_seq = 0
        self._wake_scheduled = False
        self._call_soon: CallSoon | None = None
        self.delivering = threading.Lock()
        """Held while a burst is taken and delivered (by the loop, ``deliver_now`` or the bus)."""
        self._loop_thread: int | None = None
        self._wakeup = anyio.Event()
        self._nudge = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    # --- publishing: any thread ---------------------------------------------------------------

    def emit(self, event_type: type[E], /, **fields: Any) -> E:
        """Build an event with the envelope (run_id, next seq, time, rank) and queue it."""
        if event_type not in _KNOWN_TYPES:
            raise _unknown_type(event_type)
        if self.failure is not None:
            raise self.refusal()
        pending = self._pending
        with self._lock:
            seq = self._next_seq
            self._next_seq = seq + 1
            event = event_type(run_id=self.run_id, seq=seq, time=_now(), rank=self.rank, **fields)
            pending.append(event)  # type: ignore[arg-type]  # checked against _KNOWN_TYPES
        if (
            not self._wake_scheduled
            or self._loop_thread == _thread_id()
            or len(pending) > _HIGH_WATER
        ):
            self._after_append()  # rare: see there; the common case costs no call
        return event

    def publish(self, event: E) -> E:
        """Queue a ready-made event under the next ``seq`` and this outbox's ``run_id``/``rank``."""
        if type(event) not in _KNOWN_TYPES:
            raise _unknown_type(type(event))
        if self.failure is not None:
            raise self.refusal()
        pending = self._pending
        with self._lock:
            seq = self._next_seq
            self._next_seq = seq + 1
            if event.seq != seq or event.run_id != self.run_id or event.rank != self.rank:
                event = msgspec.structs.replace(event, seq=seq, run_id=self.run_id, rank=self.rank)
            pending.append(cast(Event, event))
        if (
            not self._wake_scheduled
            or self._loop_thread == _thread_id()
            or len(pending) > _HIGH_WATER
        ):
            self._after_append()  # rare: see there; the common case costs no call
        return event

    def publish_marks(self, marks: list[Mark]) -> None:
        """Queue envelope-only events the caller stamped, under consecutive ``seq`` numbers.

        One lock and one wake-up check for all of them; the types are not checked (the caller
        passes envelope-only members of ``trainbus.bus._events.Event``).
        """
        if self.failure is not None:
            raise self.refusal()
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
        if (
            not self._wake_scheduled
            or self._loop_thread == _thread_id()
            or len(pending) > _HIGH_WATER
        ):
            self._after_append()  # rare: see there; the common case costs no call

    def _after_append(self) -> None:
        """Wake the loop if it sleeps; slow a flood down (see ``_yield_to_loop``).

        The publishing calls come here only when one of the three applies (a training thread
        publishing steadily meets none of them), which saves a call on every publish.
        """
        call_soon = self._call_soon
        if not self._wake_scheduled and call_soon is not None:  # None: no loop yet (or any more)
            self._wake_scheduled = True
            try:
                # The event the loop waits on now: the loop replaces it only after it fired, and
                # clears the flag (letting a publisher here) only after replacing it.
                call_soon(self._wakeup.set)
            except RuntimeError:  # the loop closed under us; nothing left to wake
                self._wake_scheduled = False
        if self._loop_thread == _thread_id():
            self._nudge.set()  # published on the loop itself: drain at its next turn, no poll
        if len(self._pending) > _HIGH_WATER:
            self._yield_to_loop()

    def _yield_to_loop(self) -> None:
        """Flow control for floods: let the loop catch up, for at most a millisecond per call.

        Only reached when the loop is more than ``_HIGH_WATER`` events behind, which a training
        loop publishing a few events per step never is; a flood (or a loop starved of CPU) would
        otherwise grow the backlog without bound. Sleeping releases the GIL to the loop thread;
        this never waits on I/O and never waits long, so a stuck loop slows publishing down
        instead of hanging it.
        """
        if self._call_soon is None or _thread_id() == self._loop_thread:
            return
        if not self.flow_control_pauses:
            log.warning("bus_flow_control", backlog=len(self._pending), run_id=self.run_id)
        self.flow_control_pauses += 1
        deadline = time.monotonic() + _MAX_PAUSE
        while len(self._pending) > _HIGH_WATER // 2 and time.monotonic() < deadline:
            time.sleep(_MAX_PAUSE / 4)

    def refuse(self, cause: Exception, reason: str) -> None:
        """Refuse every later publish with ``JournalError(reason)`` caused by ``cause``."""
        self._refusal_reason = reason
        self.failure = cause

    def refusal(self) -> JournalError:
        """The error a refused publish raises (a new one each time: tracebacks do not pile up)."""
        error = JournalError(self._refusal_reason)
        error.__cause__ = self.failure
        return error

    def continue_after(self, last_seq: int, journal: Path) -> None:
        """Number the next event after ``last_seq``, the last one an existing ``journal`` holds.

        Raises ``JournalError`` when events numbered from 0 already wait here: they would reuse
        sequence numbers the journal has.
        """
        with self._lock:
            if last_seq >= self._next_seq:
                if self._next_seq > 0:
                    raise JournalError(
                        f"The journal {journal} already holds events up to seq {last_seq}, but "
                        f"this bus published seq 0..{self._next_seq - 1} before it started."
                    )
                self._next_seq = last_seq + 1
                self._first_seq = self._next_seq

    # --- the loop's side ----------------------------------------------------------------------

    def __len__(self) -> int:
        """How many events wait (a snapshot when other threads publish)."""
        return len(self._pending)

    @property
    def published(self) -> int:
        """How many events this outbox numbered (those before a journal it continues excluded)."""
        return self._next_seq - self._first_seq

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event numbered (-1 for none)."""
        return self._next_seq - 1

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the thread of the loop this outbox serves."""
        return _thread_id() == self._loop_thread

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Deliver what is published, burst by burst, until ``stop()``; call on the loop.

        Events published before the start are delivered first. A failing ``deliver`` is logged
        and raised, so the task group running this hears of it.
        """
        self._wakeup = anyio.Event()
        self._nudge = anyio.Event()
        self._call_soon = loop_call_soon()
        self._loop_thread = _thread_id()
        with anyio.CancelScope() as self._scope:
            task_status.started()
            self._wakeup.set()  # events published before the start
            try:
                while True:
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    if self._wake_interval:
                        await self._poll()  # publishers see _wake_scheduled set meanwhile
                    await self.drain()
            except Exception as exc:  # deliver failed (a journal write): the run must hear of it
                log.error("bus_drain_failed", run_id=self.run_id, exc_info=exc)
                raise

    def stop(self) -> None:
        """End ``serve`` and wake the loop no more; later events wait for ``take_all``."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self._call_soon = None

    def detach(self) -> None:
        """Forget the loop's thread, once nothing of the bus runs on that loop any more."""
        self._loop_thread = None

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
        pending = self._pending
        idle = 0
        while idle < _IDLE_POLLS:
            with anyio.move_on_after(self._wake_interval):
                await self._nudge.wait()
            self._nudge = anyio.Event()
            if pending:
                idle = 0
                while pending:
                    self._deliver_burst()
                    await anyio.lowlevel.checkpoint()
            else:
                idle += 1

    async def drain(self) -> None:
        """Deliver every event published so far; the next publish wakes the loop again."""
        pending = self._pending
        while True:
            while pending:
                self._deliver_burst()
                await anyio.lowlevel.checkpoint()
            self._wake_scheduled = False
            if not pending:  # re-check: a publisher may have seen the flag still set
                return

    def _deliver_burst(self) -> None:
        pending = self._pending
        with self.delivering:
            burst = [pending.popleft() for _ in range(min(len(pending), _BURST))]
            if burst:
                self._deliver(burst)

    def deliver_now(self, *, bursts: int | None = None) -> None:
        """Deliver what is pending from the calling thread (any thread), ``bursts`` at most.

        For when the loop cannot or need not do it: the bus's watchdog while a sink blocks the
        loop, the training thread before an ``fsync``, a sink runner that ran dry. ``deliver``
        then runs on the calling thread; what it raises propagates.
        """
        pending = self._pending
        left = bursts
        while pending and (left is None or left > 0):
            self._deliver_burst()
            if left is not None:
                left -= 1

    def take_all(self) -> list[Event]:
        """Everything pending, oldest first (the close's last look)."""
        pending = self._pending
        return [pending.popleft() for _ in range(len(pending))]
