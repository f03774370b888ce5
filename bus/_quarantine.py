"""Quarantined points: what a sink will never send, counted and named next to its cursor.

A point the destination refuses (a metric key it forbids, an event it answers 400 for) must
neither block the cursor forever nor vanish silently. The runtime moves the cursor past it and
records it here first, in ``cursors/<sink name>.quarantine.json`` beside the cursor, so the
closing report, ``trainbus show`` and a later ``trainbus sync`` all tell the same story. The
journal keeps the event itself: moving a sink's cursor back replays it once the sink is fixed.

The file holds the total count and the first ``MAX_NAMED`` points, so it stays small however
many points a broken logger produces. It also holds ``through_seq``, the last seq of the batch
recorded last: a crash between this file and the cursor makes the runtime send that batch
again, and the points it quarantines a second time are not counted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from trainbus.bus._cursor import CursorStore
from trainbus.bus._errors import JournalError
from trainbus.bus._files import replace_file
from trainbus.bus._stats import QuarantinedPoint

__all__ = ["MAX_NAMED", "QuarantineLog"]

MAX_NAMED: Final = 100
"""Points named one by one; beyond them only the count grows."""

_SUFFIX: Final = ".quarantine.json"


class _Document(msgspec.Struct, kw_only=True):
    count: int = 0
    through_seq: int = -1
    points: list[QuarantinedPoint] = []


class QuarantineLog:
    """One sink's quarantined points, in memory and (with a cursor directory) on disk."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._doc = _Document()
        if path is not None and path.exists():
            try:
                self._doc = msgspec.json.decode(path.read_bytes(), type=_Document)
            except msgspec.DecodeError as exc:
                raise JournalError(
                    f"The quarantine file {path} should hold a JSON quarantine record: {exc}"
                ) from exc

    @classmethod
    def for_sink(cls, cursors: CursorStore, sink_name: str) -> QuarantineLog:
        """The log beside ``sink_name``'s cursor file (memory only when cursors are)."""
        cursor = cursors.path(sink_name)
        if cursor is None:
            return cls(None)
        return cls(cursor.with_name(cursor.name.removesuffix(".cursor") + _SUFFIX))

    @property
    def count(self) -> int:
        """Points quarantined over the life of the run directory."""
        return self._doc.count

    @property
    def points(self) -> tuple[QuarantinedPoint, ...]:
        """The first ``MAX_NAMED`` of them, in the order they were found."""
        return tuple(self._doc.points)

    def record(self, points: list[QuarantinedPoint], through_seq: int) -> int:
        """Add the points of a batch ending at ``through_seq``; returns how many were new.

        Called before the cursor moves past the batch; a batch at or before the last one
        recorded is a re-send after a crash, already counted.
        """
        if not points or through_seq <= self._doc.through_seq:
            return 0
        doc = self._doc
        doc.count += len(points)
        doc.through_seq = through_seq
        doc.points.extend(points[: max(0, MAX_NAMED - len(doc.points))])
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(self.path, msgspec.json.encode(doc), fsync=True)
        return len(points)
