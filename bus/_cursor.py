"""Per-sink cursors: the last journal ``seq`` a sink's destination acknowledged.

A cursor moves only after the destination accepted a batch, and is replaced atomically
(``trainbus.bus._files.replace_file``), so after any crash it names a batch that really arrived. A
crash between the acknowledgement and the cursor write makes the next run or ``trainbus sync``
send that batch again: delivery is at-least-once, never at-most-once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from trainbus.bus._errors import StateFileError
from trainbus.bus._files import replace_file

__all__ = ["CursorStore"]

_SUFFIX: Final = ".cursor"


class CursorStore:
    """Cursor files under one directory (``<run>/cursors/<sink name>.cursor``), or memory only."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, int] = {}

    def path(self, sink_name: str) -> Path | None:
        """Where ``sink_name``'s cursor lives, or ``None`` when cursors are kept in memory."""
        if self.directory is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sink_name)
        return self.directory / f"{safe}{_SUFFIX}"

    def read(self, sink_name: str, *, journal_last_seq: int | None = None) -> int:
        """The acknowledged seq, or -1 when the sink has acknowledged nothing yet.

        Args:
            sink_name: whose cursor.
            journal_last_seq: the last seq the journal holds; a cursor beyond it belongs to
                another journal (one deleted or replaced), and trusting it would skip every
                event up to it without a word, so it raises a `StateFileError` instead.
        """
        path = self.path(sink_name)
        if path is None:
            return self._memory.get(sink_name, -1)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return -1
        text = raw.decode("ascii", errors="replace").strip()
        try:
            seq = int(text)
        except ValueError as exc:
            raise StateFileError(
                f"The cursor file {path} should hold one integer seq, found {text[:40]!r}."
            ) from exc
        if seq < -1 or (journal_last_seq is not None and seq > journal_last_seq):
            last = "is empty" if journal_last_seq == -1 else f"ends at seq {journal_last_seq}"
            raise StateFileError(
                f"The cursor file {path} says seq {seq} was delivered, but the journal {last}: "
                "the cursor belongs to another journal; delete it to deliver this journal anew."
            )
        return seq

    def write(self, sink_name: str, seq: int, *, durable: bool = False) -> None:
        """Record ``seq`` as acknowledged; ``durable`` also fsyncs (used at close)."""
        path = self.path(sink_name)
        if path is None:
            self._memory[sink_name] = seq
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # No fsync per batch (it runs per acknowledgement); a crash may lose only the last
        # move, which at-least-once delivery absorbs by sending that batch again.
        replace_file(path, b"%d\n" % seq, fsync=durable)
