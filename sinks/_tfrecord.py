"""A minimal writer of TensorBoard event files (TFRecord framing around ``Event`` protobufs).

Why not TensorBoard's own writer: it builds protobuf objects and hands them to a thread, about
65-130 µs per scalar of Python time that competes with the training thread for the GIL (see
``benchmarks/bench_sinks.py``). With ``google-crc32c`` installed the checksum is native and a
scalar costs a few µs; without it the pure-Python CRC dominates (~10 µs a scalar). Scalars
and text are two fixed message shapes, so they are encoded here by hand (a few µs per scalar);
the output is the standard format, read back by TensorBoard's ``EventAccumulator`` in the tests.

Framing of one record: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, little-endian; CRC-32C (Castagnoli) masked as TensorFlow does.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "EventFileWriter",
    "crc32c",
    "encode_scalars",
    "encode_text",
    "frame",
    "masked_crc32c",
    "py_crc32c",
]


def _table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE: Final = _table()
_U64: Final = struct.Struct("<Q")
_U32: Final = struct.Struct("<I")
_F32: Final = struct.Struct("<f")
_F64: Final = struct.Struct("<d")


def py_crc32c(data: bytes) -> int:
    """CRC-32C of ``data``, table driven in pure Python (the fallback; ~0.1-0.3 µs a byte)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _native_crc32c() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c
    except ImportError:
        return None
    value: Callable[[bytes], int] = google_crc32c.value
    return value


crc32c: Final[Callable[[bytes], int]] = _native_crc32c() or py_crc32c
"""CRC-32C: ``google-crc32c``'s C code when installed (the ``tensorboard`` extra), else Python."""


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    # Event: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5.
    return b"\x09" + _F64.pack(wall_time) + b"\x10" + _varint(step) + body


def encode_scalars(wall_time: float, step: int, scalars: Iterable[tuple[str, float]]) -> bytes:
    """One ``Event`` holding a ``Summary`` with one ``simple_value`` per scalar."""
    pack = _F32.pack
    values = b"".join(_value_head(tag) + pack(value) for tag, value in scalars)
    return _event(wall_time, step, _field(5, values))


@functools.lru_cache(maxsize=8192)
def _value_head(tag: str) -> bytes:
    """A ``Summary.Value`` up to its float: tag = 1, then the key of simple_value = 2 (float32).

    The value's length is the same for every float, so all of it but the last four bytes
    depends on the tag alone; cached, that is most of the per-scalar encoding work saved.
    """
    inner = _field(1, tag.encode()) + b"\x15"
    return _varint((1 << 3) | 2) + _varint(len(inner) + 4) + inner


_TEXT_METADATA: Final = _field(9, _field(1, _field(1, b"text")))  # plugin_data.plugin_name


def encode_text(wall_time: float, step: int, tag: str, text: str) -> bytes:
    """One ``Event`` with a text summary, as TensorBoard's text plugin expects it."""
    # TensorProto: dtype = 1 (DT_STRING = 7), tensor_shape = 2 (one dim of size 1), string_val = 8
    shape = _field(2, _field(2, b"\x08\x01"))
    tensor = b"\x08\x07" + shape + _field(8, text.encode())
    value = _field(1, tag.encode()) + _TEXT_METADATA + _field(8, tensor)
    return _event(wall_time, step, _field(5, _field(1, value)))


def frame(record: bytes) -> bytes:
    """TFRecord framing of one serialized record."""
    header = _U64.pack(len(record))
    return header + _U32.pack(masked_crc32c(header)) + record + _U32.pack(masked_crc32c(record))


class EventFileWriter:
    """Append-only event file in ``log_dir``; writes are buffered, ``flush()`` pushes them out."""

    def __init__(self, log_dir: Path, *, filename_suffix: str = "") -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}{filename_suffix}"
        )
        self.path = log_dir / name
        self._file: BinaryIO = self.path.open("ab", buffering=1 << 16)
        version = b"\x09" + _F64.pack(time.time()) + _field(3, b"brain.Event:2")
        self._file.write(frame(version))

    def write(self, record: bytes) -> None:
        self._file.write(frame(record))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
