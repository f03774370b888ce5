"""What every sink over a blocking vendor SDK shares: its worker thread and its replay state.

An SDK call blocks (it writes files, waits for a server), so it never runs on the event loop:
``SdkWorker.call`` runs it in a worker thread, one call at a time (SDKs are not thread-safe, and
a sink's calls must stay in ``seq`` order), translating the SDK's failures into the runtime's
errors with the sink's own ``_map_errors``. A call still running at the close deadline is
abandoned, since a thread cannot be cancelled.

The runtime delivers a batch again after a crash between the SDK accepting it and the cursor
being written; most SDKs append every point they are given. ``SinkState`` is the sink's JSON
state file in the run directory (remote ids, flags), and in it ``written_seq``, the highest event
the SDK accepted: a sink hands the SDK only ``fresh(batch)`` and calls ``advance`` once the SDK
accepted it, so replays never log a point twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from trainbus.bus._events import EventBase
from trainbus.sinks._state import load_state, save_state

__all__ = ["SdkWorker", "SinkState", "imported_sdk"]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=EventBase)


def imported_sdk(module: str) -> Any | None:
    """The SDK module when the process imported it already, else ``None``; never imports it.

    For a sink deciding where to run: a run the user started with the SDK itself (``wandb.init``
    before ``train()``) lives in this process, and a sink that adopts it must stay here too.
    """
    return sys.modules.get(module)


class SdkWorker:
    """Runs a sink's SDK calls in a worker thread, one at a time, with its errors mapped.

    Args:
        map_errors: makes the context manager that translates the SDK's exceptions (called
            once per call, so it may look at the SDK module imported since).
    """

    def __init__(self, map_errors: Callable[[], AbstractContextManager[object]]) -> None:
        self._map_errors = map_errors
        self._limiter = anyio.CapacityLimiter(1)

    async def call(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` in the worker thread, after the calls before it have returned."""
        with self._map_errors():
            return await anyio.to_thread.run_sync(
                lambda: func(*args), limiter=self._limiter, abandon_on_cancel=True
            )

    async def write_fresh(
        self, state: SinkState, batch: Sequence[_E], write: Callable[[list[_E]], object]
    ) -> None:
        """A sink's whole ``write`` when its SDK takes a batch in one call: ``write(fresh)`` in
        the worker for the events the SDK has not accepted yet, then the watermark moves past
        them and is saved (only then: a crash in between replays them, it never skips them)."""
        fresh = state.fresh(batch)
        if fresh:
            await self.call(write, fresh)
            state.advance(fresh[-1].seq)


class SinkState(dict[str, Any]):
    """A sink's state file (a JSON object) and its replay watermark ``written_seq``.

    Args:
        path: the file, in the run directory; ``None`` keeps the state in this object only
            (a sink built without a run directory), and ``load`` then keeps what it holds.
    """

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self.path = path

    def load(self) -> None:
        """Read the file (empty when it is missing or unreadable), in the sink's ``open``."""
        if self.path is not None:
            self.clear()
            self.update(load_state(self.path))

    def save(self) -> None:
        """Replace the file atomically (nothing without a path)."""
        if self.path is not None:
            save_state(self.path, self)

    @property
    def written_seq(self) -> int:
        """The highest event the SDK accepted; -1 before the first."""
        return int(self.get("written_seq", -1))

    def fresh(self, batch: Sequence[_E]) -> list[_E]:
        """The events of ``batch`` the SDK has not accepted yet (a replay's are dropped)."""
        written = self.written_seq
        return [event for event in batch if event.seq > written]

    def advance(self, seq: int, *, save: bool = True) -> None:
        """Record that the SDK accepted every event up to ``seq``; save the file unless the
        sink saves it later itself."""
        self["written_seq"] = seq
        if save:
            self.save()
