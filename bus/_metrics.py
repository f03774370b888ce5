"""The bus's own metrics: one snapshot of how the run's delivery is doing, for exporters.

``Bus.metrics()`` returns a ``BusMetrics``; the orchestrator adds the sinks that run in the sink
process and exports it (``trainbus.orchestrator.metrics``: Prometheus, OpenTelemetry, a live
stream). The snapshot is plain data, taken from any thread without a lock: each figure is read
once, so two figures of one snapshot may be a burst apart while the run is live, and all agree
once it is idle or closed.

Counters (``published``, ``journaled``, a sink's ``delivered``, ``retried``, ...) only grow for
the life of one bus; a bus opened again (``evaluate()`` after ``train()``) starts from zero, which
Prometheus reads as a counter reset. ``quarantined`` is the exception: it counts over the life of
the run directory, as the quarantine file does.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from trainbus.bus._stats import SinkStats

__all__ = ["BusMetrics", "journal_bytes"]


class BusMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one run's bus: what was published, journaled, and delivered per sink.

    ``sinks`` holds every sink of the run: those on this bus's loop exactly, those in the sink
    process as the child last wrote them (see ``trainbus.orchestrator.sink_host``).
    """

    run_id: str
    rank: int
    time: float
    """Wall-clock time of the snapshot (``time.time()``)."""
    running: bool
    """Whether the bus is open (inside ``async with``)."""
    published: int
    """Events this bus numbered (published by the training side)."""
    journaled: int
    """Events this bus appended to its journal (fewer under a rank's ``journal_filter``)."""
    last_seq: int
    """The ``seq`` of the last event published (-1 for none)."""
    queued: int
    """Events published and not yet journaled nor offered to the sinks (the outbox)."""
    journal_bytes: int
    """The journal's size on disk, compressed segments included (0 without a journal)."""
    publish_pauses: int
    """Publishes that paused because the loop was far behind (flow control)."""
    sinks: tuple[SinkStats, ...] = ()


def journal_bytes(path: Path | None) -> int:
    """The size on disk of the journal at ``path``: a directory of segments or a single file.

    0 when there is none (yet); a segment compacted away while we look is not counted.
    """
    if path is None:
        return 0
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        total += entry.stat().st_size
                except FileNotFoundError:  # compressed and removed meanwhile
                    continue
        return total
    except FileNotFoundError:
        return 0
