"""W&B's transaction log (``run-<id>.wandb``), read while its service may still be writing it.

The file is a 7-byte header (``:W&B``, magic 0xBEE1 little-endian, version 0) followed by
LevelDB-log framing: 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of type and
data, length, type: full, or first/middle/last piece of a record), a block's tail too short for a
header left as padding. Each record is one ``wandb.proto.wandb_internal_pb2.Record``.

Why the sink reads it: the SDK's service (``wandb-core``) keeps the file's last block in memory
and writes it when the run's stream closes, which ``run.finish()`` only requests. A run is on
disk once its ``exit`` record, the last record the service writes, is in the file.
"""

from __future__ import annotations

import importlib
import json
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["HEADER", "DurableFrontier", "TransactionLog", "iter_records"]

HEADER: Final = b":W&B\xe1\xbe\x00"
BLOCK: Final = 32 * 1024
_CHUNK: Final = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(data: bytes, *, base: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(end, payload)`` of each complete record in ``data``, the file's bytes from offset
    ``base`` (0, or an ``end`` given earlier); ``end`` is the file offset just after the record.

    A record still being written (a chunk cut short, or its last piece missing) ends the
    iteration; a chunk whose checksum fails raises ``ValueError`` naming its offset.
    """
    pos = base
    if base == 0:
        if not data.startswith(HEADER):
            if HEADER.startswith(data):
                return  # the header itself is not written yet
            raise ValueError("not a W&B transaction log: the header is missing")
        pos = len(HEADER)
    pending = b""
    while True:
        room = BLOCK - pos % BLOCK
        if room < _CHUNK.size:
            pos += room  # a block's tail too short for a chunk header is padding
            continue
        start = pos - base
        if start + _CHUNK.size > len(data):
            return
        crc, length, kind = _CHUNK.unpack_from(data, start)
        if kind == 0 and length == 0:
            return  # zero fill: nothing written here yet
        chunk = data[start + _CHUNK.size : start + _CHUNK.size + length]
        if len(chunk) < length:
            return
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"corrupt W&B transaction log chunk at byte {pos}")
        pos += _CHUNK.size + length
        pending += chunk
        if kind in (_FULL, _LAST):
            yield pos, pending
            pending = b""


class TransactionLog:
    """One run's transaction log, read incrementally from the last complete record seen.

    Besides whether the run ended, it tells how many history rows are on disk (``rows``: the
    highest ``_step`` seen, plus one), which is how far a crash of this process would leave
    the run: the service writes records in the order the SDK was called.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._offset = 0
        self._ended = False
        self._schema: Any = None

    def ended(self) -> bool:
        """Whether the last complete record in the file is the run's ``exit`` record."""
        self.refresh()
        return self._ended

    @property
    def complete(self) -> bool:
        """What ``ended()`` found last, without reading the file again."""
        return self._ended

    def refresh(self) -> None:
        """Read the records written since the last call."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        if self._schema is None:
            self._schema = importlib.import_module("wandb.proto.wandb_internal_pb2")
        for end, payload in iter_records(data, base=self._offset):
            self._offset = end
            record = self._schema.Record.FromString(payload)
            kind = record.WhichOneof("record_type")
            self._ended = kind == "exit"
            if kind == "history":
                self.rows = max(self.rows, _row_step(record.history) + 1)


def _row_step(history: Any) -> int:
    """The ``_step`` of a history record (-1 when it has none)."""
    for item in history.item:
        if (item.key or "/".join(item.nested_key)) == "_step":
            return int(json.loads(item.value_json))
    return -1


class DurableFrontier:
    """Which of the events handed to the SDK a run's transaction log holds for good.

    Each event is marked with the number of history rows that must be on disk for all of its
    records to be there: the rows logged so far when the event logged a row last, one more when
    it logged none (a summary, the config, an artifact: the next row, written after them,
    proves them). An ended log holds every event.
    """

    def __init__(self, transaction_log: TransactionLog) -> None:
        self.log = transaction_log
        self._marks: deque[tuple[int, int]] = deque()

    def mark(self, seq: int, rows_needed: int) -> None:
        """Record that every record of event ``seq`` is in the log once it has ``rows_needed``
        history rows."""
        self._marks.append((seq, rows_needed))

    def advance(self) -> int | None:
        """Read the log; the last seq now held for good, if any event newly is."""
        self.log.refresh()
        last = None
        while self._marks and (self.log.complete or self._marks[0][1] <= self.log.rows):
            last = self._marks.popleft()[0]
        return last
