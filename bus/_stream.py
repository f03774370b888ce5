"""Live subscriptions: an application watching a run's events as they happen.

A subscription is a view for dashboards and services, not a delivery channel: its buffer is
bounded, and a subscriber that falls more than ``max_buffer`` events behind loses the *oldest*
ones (counted in ``dropped``, logged once per overflow) rather than slowing the run or growing
memory. Anything that must see every event is a sink, or reads the journal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType

import anyio
import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Event, EventBase

__all__ = ["Subscription"]

log = structlog.get_logger(__name__)


class Subscription:
    """An async iterator over a bus's events; ends when the bus closes or on ``aclose()``.

    ::

        async with bus.stream(Log, Evaluate, max_buffer=256) as events:
            async for event in events:
                dashboard.update(event)
    """

    def __init__(
        self,
        event_types: tuple[type[EventBase], ...],
        max_buffer: int | None,
        on_close: Callable[[Subscription], None],
    ) -> None:
        if max_buffer is not None and max_buffer < 1:
            raise ConfigurationError(
                f"stream(max_buffer=...) must be at least 1, got {max_buffer}."
            )
        self._types = event_types or None
        self._buffer: deque[Event] = deque(maxlen=max_buffer)
        self._max = max_buffer
        self._wake = anyio.Event()
        self._closed = False
        self._overflowing = False
        self._on_close = on_close
        self.dropped = 0
        """Events lost because the subscriber fell more than ``max_buffer`` events behind."""

    def offer(self, events: Sequence[Event]) -> None:
        """Called by the bus on its loop with each burst of events."""
        if self._closed:
            return
        buffer = self._buffer
        types = self._types
        for event in events:
            if types is None or isinstance(event, types):
                if len(buffer) == self._max:
                    self.dropped += 1
                    if not self._overflowing:
                        self._overflowing = True
                        log.warning("stream_overflow", max_buffer=self._max)
                buffer.append(event)
        self._wake.set()

    def close(self) -> None:
        """Stop receiving; iteration ends once the buffered events are consumed."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._wake.set()

    async def aclose(self) -> None:
        """Same as ``close``, for ``contextlib.aclosing`` and friends."""
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._wake.wait()
            self._wake = anyio.Event()
        self._overflowing = False
        return self._buffer.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
