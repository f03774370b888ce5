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
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["HEADER", "TransactionLog", "iter_records"]

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
    """One run's transaction log, read incrementally from the last complete record seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._last: bytes | None = None

    def ended(self) -> bool:
        """Whether the last complete record in the file is the run's ``exit`` record."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return False
        for end, payload in iter_records(data, base=self._offset):
            self._offset, self._last = end, payload
        if self._last is None:
            return False
        schema: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
        return bool(schema.Record.FromString(self._last).WhichOneof("record_type") == "exit")
