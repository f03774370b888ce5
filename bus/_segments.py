"""Where a journal's records live: one file, or a directory of segments.

A journal written by this version is a directory of segment files, each in the format of
``trainbus.bus._journal`` and named after the first ``seq`` it may hold::

    journal/
        000000000000.tbj.gz      finished and acknowledged by every sink: compressed
        000000262144.tbj.gz
        000000524288.tbj         the live segment: appended to, plain, torn tail repaired here

Naming a segment by its first seq lets a reader go straight to the segment of a ``seq``, and the
order of the names is the order of the records. A journal written before segments existed is one
plain file; it reads as a journal of one segment whose first seq is 0.

Readers speak of *positions*, not file offsets: ``first_seq << POSITION_BITS | offset``, where
``offset`` counts the segment's uncompressed bytes. Positions grow along the journal, a position
stays valid when its segment is compressed, and in a single-file journal a position is the file
offset, as it always was.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "COMPRESSED_SUFFIX",
    "PLAIN_SUFFIX",
    "POSITION_BITS",
    "Segment",
    "list_segments",
    "open_segment",
    "position",
    "segment_name",
    "split_position",
]

PLAIN_SUFFIX: Final = ".tbj"
COMPRESSED_SUFFIX: Final = ".tbj.gz"
POSITION_BITS: Final = 40
"""Offsets inside one segment stay below 1 TiB; a segment is rotated long before that."""
_OFFSET_MASK: Final = (1 << POSITION_BITS) - 1
_NAME_DIGITS: Final = 12


@dataclass(frozen=True)
class Segment:
    """One segment file: the first seq it may hold, its path, and whether it is compressed."""

    first_seq: int
    path: Path
    compressed: bool

    @property
    def base(self) -> int:
        """The position of this segment's first byte."""
        return self.first_seq << POSITION_BITS


def position(first_seq: int, offset: int) -> int:
    """The position of ``offset`` (uncompressed) in the segment starting at ``first_seq``."""
    return (first_seq << POSITION_BITS) | offset


def split_position(pos: int) -> tuple[int, int]:
    """``(first_seq, offset)`` of a position."""
    return pos >> POSITION_BITS, pos & _OFFSET_MASK


def segment_name(first_seq: int, *, compressed: bool = False) -> str:
    """The file name of the segment starting at ``first_seq``."""
    return f"{first_seq:0{_NAME_DIGITS}d}{COMPRESSED_SUFFIX if compressed else PLAIN_SUFFIX}"


def _parse_name(name: str) -> tuple[int, bool] | None:
    for suffix, compressed in ((COMPRESSED_SUFFIX, True), (PLAIN_SUFFIX, False)):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if stem.isdigit() and stem.isascii():
                return int(stem), compressed
    return None


def list_segments(path: Path) -> list[Segment]:
    """The segments of the journal at ``path`` in order (a single-file journal is one segment).

    Where a segment exists both plain and compressed (its compression has just finished), the
    plain file wins: it is complete, and it is what a reader that opened it earlier still reads.
    Temporary files of an unfinished compression are ignored.
    """
    if not path.is_dir():
        return [Segment(0, path, False)]
    found: dict[int, Segment] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            parsed = _parse_name(entry.name)
            if parsed is None:
                continue
            first_seq, compressed = parsed
            if first_seq not in found or not compressed:
                found[first_seq] = Segment(first_seq, Path(entry.path), compressed)
    return [found[k] for k in sorted(found)]


def open_segment(segment: Segment) -> BinaryIO:
    """Open a segment for reading its uncompressed bytes.

    A plain segment compressed (and removed) since it was listed is read from its compressed
    file: the bytes, and so every position, are the same.
    """
    if not segment.compressed:
        try:
            return open(segment.path, "rb")
        except FileNotFoundError:
            if segment.path.parent.is_dir() and segment.path.suffix == PLAIN_SUFFIX:
                compressed = segment.path.with_name(
                    segment_name(segment.first_seq, compressed=True)
                )
                if compressed.exists():
                    return open_segment(Segment(segment.first_seq, compressed, True))
            raise
    return gzip.open(segment.path, "rb")  # type: ignore[return-value]  # a GzipFile reads bytes
