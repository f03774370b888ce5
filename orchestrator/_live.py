"""A run's live figures for the process that trains: every sink's, and a stream of them.

The bus knows the sinks on its own loop (``Bus.metrics``); the sinks moved to the sink process
report through the file it writes (``trainbus.orchestrator.sink_host.read_live_stats``). Before
its first report a moved sink is described from its cursor file: ``acknowledged_seq`` exact,
``lag_events`` counted in journal sequence numbers (events it filters out included), its
counters zero. ``run_metrics`` puts the two together; ``MetricsStream`` is what
``Orchestrator.metrics()`` iterates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import anyio
import msgspec

from trainbus.bus._bus import Bus
from trainbus.bus._cursor import CursorStore
from trainbus.bus._errors import ConfigurationError, StateFileError
from trainbus.bus._metrics import BusMetrics
from trainbus.bus._stats import SinkStats
from trainbus.orchestrator.rundir import RunDir
from trainbus.orchestrator.sink_host import read_live_stats

__all__ = ["MetricsStream", "check_interval", "run_metrics"]


def run_metrics(bus: Bus, run_dir: RunDir, moved: Sequence[str]) -> BusMetrics:
    """``bus.metrics()`` with the sinks of the sink process (``moved``) added."""
    metrics = bus.metrics()
    if not moved:
        return metrics
    reported = {stats.name: stats for stats in read_live_stats(run_dir) if stats.name in moved}
    cursors = CursorStore(run_dir.cursor_dir)
    extra = [reported.get(name) or _from_cursor(cursors, name, metrics.last_seq) for name in moved]
    return msgspec.structs.replace(metrics, sinks=(*metrics.sinks, *extra))


def _from_cursor(cursors: CursorStore, name: str, last_seq: int) -> SinkStats:
    try:
        acked = cursors.read(name)
    except StateFileError:  # a cursor being replaced, or broken: the child will say
        acked = -1
    return SinkStats(
        name=name,
        mode="starting",
        delivered=0,
        retried=0,
        failed=0,
        skipped=0,
        crashes=0,
        acknowledged_seq=acked,
        lag_events=max(0, last_seq - acked),
        lag_seconds=0.0,
        health="starting",
    )


class MetricsStream:
    """``async for snapshot in orch.metrics(interval=...)``: a snapshot now, then one every
    ``interval`` seconds, and a last one once the run has closed, after which it ends.

    Nothing is buffered: a snapshot is taken when the consumer asks for the next one, so a slow
    consumer gets fresher figures, never a backlog, and memory stays constant.
    """

    def __init__(
        self,
        snapshot: Callable[[], BusMetrics | None],
        finished: anyio.Event,
        interval: float,
    ) -> None:
        self._snapshot = snapshot
        self._finished = finished
        self._interval = interval
        self._started = False
        self._ended = False

    def __aiter__(self) -> MetricsStream:
        return self

    async def __anext__(self) -> BusMetrics:
        while not self._ended:
            if self._started and not self._finished.is_set():
                with anyio.move_on_after(self._interval):
                    await self._finished.wait()
            self._started = True
            self._ended = self._finished.is_set()
            metrics = self._snapshot()
            if metrics is not None:
                return metrics
        raise StopAsyncIteration


def check_interval(interval: float) -> float:
    """``metrics(interval=...)``: a finite number of seconds > 0."""
    if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
        raise ConfigurationError(
            f"metrics(interval=...) must be a finite number of seconds > 0, got {interval!r}."
        )
    return float(interval)
