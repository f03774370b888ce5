"""What the sink runtime tells the application about each sink."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = ["QuarantinedPoint", "SinkHealth", "SinkMode", "SinkReport", "SinkStats"]

SinkMode: TypeAlias = Literal["starting", "live", "catch-up", "disabled", "closed"]
"""``live``: fed from memory; ``catch-up``: reading the journal after its queue overflowed (or
after a restart); ``disabled``: stopped after repeated crashes or a permanent error opening."""

SinkHealth: TypeAlias = Literal[
    "starting", "healthy", "retrying", "quarantined", "failed", "closed"
]
"""How a sink is doing, for operators (``trainbus.bus._health``): ``healthy`` delivers;
``retrying`` waits to send again after a retryable error or a crash; ``quarantined`` delivers, but
has held back points its destination refuses (it stays so for the run: the points are lost to
that destination until someone looks); ``failed`` is disabled; ``closed`` has finished. Where
data flows from is ``SinkMode``'s business, not this one's."""


class QuarantinedPoint(msgspec.Struct, frozen=True, kw_only=True):
    """A point a sink will never send: the destination refuses it, so retrying cannot help.

    ``seq`` is the journal event it came from (the event stays in the journal, so a fixed sink
    can replay it); ``key`` names the metric or param within it, ``None`` when the whole event
    was refused; ``reason`` says which rule it broke or what the destination answered.
    """

    seq: int
    key: str | None = None
    reason: str


class SinkStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one sink, as ``Bus.stats()`` returns it.

    ``lag_events`` counts journal sequence numbers not yet acknowledged (events the sink filters
    out included while it is behind); ``lag_seconds`` is the age of the oldest event waiting.
    """

    name: str
    mode: SinkMode
    delivered: int
    retried: int
    failed: int
    skipped: int
    crashes: int
    acknowledged_seq: int
    lag_events: int
    lag_seconds: float
    last_error: str | None = None
    quarantined: int = 0
    """Points never sent because the destination refuses them (see ``SinkReport``)."""
    queued: int = 0
    """Events waiting in the sink's in-memory queue or in the batch being sent."""
    health: SinkHealth = "healthy"
    """The sink's state, as its ``sink_state_changed`` log events tell it."""


class SinkReport(msgspec.Struct, frozen=True, kw_only=True):
    """How a sink ended: delivered, skipped (permanent errors) and still undelivered events.

    Undelivered events stay in the journal; ``trainbus sync`` delivers them later. ``skipped``
    counts what the destination refused even after the runtime split the batch (events, or the
    parts a sink split one into); ``quarantined`` counts every point never sent (those, and the
    metrics or params a sink held back as invalid before sending) over the life of the run
    directory, and ``quarantined_points`` names the first of them.
    """

    name: str
    delivered: int
    skipped: int
    undelivered: int
    acknowledged_seq: int
    disabled: bool
    last_error: str | None = None
    quarantined: int = 0
    quarantined_points: tuple[QuarantinedPoint, ...] = ()
