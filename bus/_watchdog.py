"""The loop watchdog: notices when something blocks the bus's event loop, and names the sink.

Sinks run as tasks on the bus's loop, and a sink that blocks it (a ``time.sleep``, a synchronous
client call in ``write`` or ``close``) stops every task there. The journal must not stop with
it, so a daemon thread pings the loop every ``period`` (a callback scheduled with the loop's
thread-safe ``call_soon``: one wake-up of the loop per period, far rarer than the outbox's polls).
When a ping stays unanswered for ``stall_after`` seconds the loop is *stalled*: the watchdog
names what the loop's thread is running (the sink and its ``write``/``close``/``open``, read
from that thread's stack) in one warning, and from then on calls ``on_stall`` every
``stalled_period`` until the loop answers again; the bus journals pending events there.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import structlog

from trainbus.bus._outbox import CallSoon
from trainbus.bus._runtime import SinkRunner

__all__ = ["LoopWatchdog", "sink_call_on_thread"]

log = structlog.get_logger(__name__)

_SINK_CALLS: Final = {"_deliver": "write", "_close_sink": "close", "_open": "open"}
"""The runner's coroutines that call into a sink, and the sink method each one calls."""


def sink_call_on_thread(thread_id: int | None) -> tuple[str, str] | None:
    """``(sink name, "write" | "close" | "open")`` that the thread is inside now, if any.

    The runner's coroutine that awaits the sink is on the thread's stack while the sink runs
    (blocking it), so the innermost such frame names the sink; ``None`` when no sink call is.
    """
    if thread_id is None:
        return None
    frame: FrameType | None = sys._current_frames().get(thread_id)
    while frame is not None:
        call = _SINK_CALLS.get(frame.f_code.co_name)
        if call is not None:
            runner = frame.f_locals.get("self")
            if isinstance(runner, SinkRunner):
                return runner.name, call
        frame = frame.f_back
    return None


class LoopWatchdog:
    """Pings a loop from a daemon thread; reports a stall and calls ``on_stall`` while it lasts.

    ``call_soon`` schedules a callback on the watched loop from another thread without waiting
    (``trainbus.bus._outbox.loop_call_soon``); ``loop_thread`` is that loop's thread id.
    ``on_stall`` must not need the loop, and what it raises is logged, not propagated.
    """

    def __init__(
        self,
        *,
        call_soon: CallSoon,
        loop_thread: int | None,
        stall_after: float,
        stalled_period: float,
        on_stall: Callable[[], None],
        run_id: str,
    ) -> None:
        self.stall_after = stall_after
        self._period = min(stall_after / 2, 1.0)
        self._stalled_period = min(stalled_period, self._period) or self._period
        self._call_soon = call_soon
        self._loop_thread = loop_thread
        self._on_stall = on_stall
        self._run_id = run_id
        self._answered = True
        self._pinged_at = time.monotonic()
        self._stalled = False
        self.stalls = 0
        """How many times the loop stalled (each one named in a ``event_loop_blocked`` warning)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name=f"trainbus watchdog {run_id}", daemon=True
        )

    @property
    def stalled(self) -> bool:
        """Whether the loop has not answered for ``stall_after`` seconds, as of the last look."""
        return self._stalled

    def start(self) -> None:
        """Start watching (the thread is a daemon: it never keeps the process alive)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns without waiting for the thread (it may be inside ``on_stall``)."""
        self._stop.set()

    def _answer(self) -> None:  # on the loop
        self._answered = True

    def _watch(self) -> None:
        while not self._stop.wait(self._stalled_period if self._stalled else self._period):
            now = time.monotonic()
            if self._answered:
                if self._stalled:
                    self._stalled = False
                    log.info("event_loop_recovered", run_id=self._run_id)
                self._answered = False
                self._pinged_at = now
                try:
                    self._call_soon(self._answer)
                except RuntimeError:  # the loop is closed: nothing left to watch
                    return
            elif now - self._pinged_at >= self.stall_after:
                if not self._stalled:
                    self._stalled = True
                    self.stalls += 1
                    self._warn(now - self._pinged_at)
                try:
                    self._on_stall()
                except Exception as exc:  # the bus's own failure (a journal write): say so
                    log.error("event_loop_stall_handling_failed", run_id=self._run_id, exc_info=exc)

    def _warn(self, seconds: float) -> None:
        culprit = sink_call_on_thread(self._loop_thread)
        sink, call = culprit if culprit is not None else (None, None)
        log.warning(
            "event_loop_blocked",
            run_id=self._run_id,
            sink=sink,
            call=call,
            seconds=round(seconds, 1),
            consequence="the journal is written from another thread; the sinks wait",
            hint="a sink must not block the event loop: await I/O, or use anyio.to_thread",
        )
