"""What the sink runtime tells the application about each sink."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = ["SinkMode", "SinkReport", "SinkStats"]

SinkMode: TypeAlias = Literal["starting", "live", "catch-up", "disabled", "closed"]
"""``live``: fed from memory; ``catch-up``: reading the journal after its queue overflowed (or
after a restart); ``disabled``: stopped after repeated crashes or a permanent error opening."""


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


class SinkReport(msgspec.Struct, frozen=True, kw_only=True):
    """How a sink ended: delivered, skipped (permanent errors) and still undelivered events.

    Undelivered events stay in the journal; ``trainbus sync`` delivers them later.
    """

    name: str
    delivered: int
    skipped: int
    undelivered: int
    acknowledged_seq: int
    disabled: bool
    last_error: str | None = None
