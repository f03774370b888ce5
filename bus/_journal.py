"""The run journal: an append-only file of length-framed, checksummed msgpack records.

The journal is the run's source of truth. Sinks that fall behind read it instead of holding events
in memory, and ``trainbus sync`` replays it after the process is gone, so its format outlives the
code that wrote it::

    file    := FILE_MAGIC record*
    record  := header payload
    header  := marker:u16 flags:u16 length:u32 crc:u32 seq:u64      (little endian, 20 bytes)
    payload := msgpack(event)                                         (``length`` bytes)
    crc     := crc32(length:u32 seq:u64 payload)

The sequence number sits in the header so a reader can skip to a ``seq`` without decoding, and the
checksum covers it. A process killed mid-write leaves a *torn tail*: a partial or mismatching last
record. Readers stop before it and report it; ``repair_journal`` (and the writer, when it reopens a
journal) truncates it. Damage followed by intact records is not a torn tail but corruption, and
raises ``JournalCorruptError`` instead of dropping the records after it.

The bus writes a journal as a directory of such files, segments (``trainbus.bus._segments``,
``trainbus.bus._segmented``); ``JournalReader``, ``read_appended`` and ``repair_journal`` take
either that directory or a single-file journal of an older run, and speak of positions, which
in a single file are its offsets.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import struct
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, NamedTuple, NoReturn, cast

import msgspec
import structlog

from trainbus.bus._errors import JournalCorruptError, JournalError
from trainbus.bus._events import Event, decode_msgpack
from trainbus.bus._segments import Segment, list_segments, open_segment, split_position

__all__ = [
    "FILE_MAGIC",
    "JournalReader",
    "JournalWriter",
    "Record",
    "RepairReport",
    "TornTail",
    "decode_record",
    "read_appended",
    "repair_journal",
]

log = structlog.get_logger(__name__)

FILE_MAGIC: Final = b"TBJRNL\x00\x01"
_MARKER: Final = 0xB5E7
_HEADER: Final = struct.Struct("<HHIIQ")
_LEN_SEQ: Final = struct.Struct("<IQ")
_MAX_RECORD: Final = 64 * 1024 * 1024
_INDEX_EVERY: Final = 4096
_READ_CHUNK: Final = 1 << 20
_MARKER_BYTES: Final = _MARKER.to_bytes(2, "little")
_encode: Final = msgspec.msgpack.Encoder().encode


class Record(NamedTuple):
    """One framed record as found on disk; ``end`` is the offset just past it."""

    offset: int
    end: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class TornTail:
    """Where a journal's intact records end and how many bytes after that are unusable."""

    offset: int
    dropped_bytes: int
    reason: str


@dataclass(frozen=True)
class RepairReport:
    """What ``repair_journal`` found: the last intact seq and the tail it cut off, if any."""

    path: Path
    records: int
    last_seq: int
    torn_tail: TornTail | None


def _parse_at(data: bytes | memoryview, pos: int) -> tuple[Record | None, str]:
    """Parse the record at ``pos`` of an in-memory buffer; ``(None, reason)`` when it is not one.

    ``reason`` is ``"short"`` when the buffer ends inside the record (more bytes may follow).
    """
    if len(data) - pos < _HEADER.size:
        return None, "short"
    marker, flags, length, crc, seq = _HEADER.unpack_from(data, pos)
    if marker != _MARKER or flags != 0 or length > _MAX_RECORD:
        return None, "bad header"
    end = pos + _HEADER.size + length
    if end > len(data):
        return None, "short"
    payload = bytes(data[pos + _HEADER.size : end])
    if zlib.crc32(payload, zlib.crc32(_LEN_SEQ.pack(length, seq))) != crc:
        return None, "checksum mismatch"
    return Record(pos, end, seq, payload), ""


def _next_intact_record(data: bytes, start: int) -> int | None:
    """Offset of the first intact record at or after ``start``, by searching for its marker."""
    pos = data.find(_MARKER_BYTES, start)
    while pos != -1:
        if _parse_at(data, pos)[0] is not None:
            return pos
        pos = data.find(_MARKER_BYTES, pos + 1)
    return None


class JournalReader:
    """Reads a journal written now or long ago; never decodes a damaged record.

    After a scan stops early, ``torn_tail`` says where and why. Reading is safe while a writer in
    the same process appends: the writer only hands events on after their records are complete.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.torn_tail: TornTail | None = None

    def records(self, start_offset: int = len(FILE_MAGIC)) -> Generator[Record, None, None]:
        """Every intact record from ``start_offset`` (a record boundary) to the end or torn tail.

        Offsets are positions (``trainbus.bus._segments``): in a single-file journal the file
        offsets. A segmented journal is read across its plain and compressed segments; only its
        last (live) segment may end in a torn tail, damage anywhere else is corruption.
        """
        return cast("Generator[Record, None, None]", self._scan(start_offset, None))

    def _scan(self, start_offset: int, decode_from: int | None) -> Generator[Any, None, None]:
        """Records from ``start_offset``, or with ``decode_from`` the events with a seq from it
        on, decoded where they are read (``show`` and ``plot`` read millions: each layer of
        generators and tuples per record costs a second there)."""
        self.torn_tail = None
        if not self.path.is_dir():
            if not self.path.exists():
                raise JournalError(f"The journal {self.path} does not exist.")
            yield from self._segment_records(
                Segment(0, self.path, False), start_offset, decode_from
            )
            return
        segments = list_segments(self.path)
        first_seq, offset = split_position(start_offset)
        start = max(0, bisect.bisect_right([s.first_seq for s in segments], first_seq) - 1)
        if not segments or segments[start].first_seq != first_seq:
            offset = 0  # a position in a segment retention removed: start at the oldest kept
        for i, segment in enumerate(segments[start:], start):
            yield from self._segment_records(segment, offset, decode_from)
            offset = 0
            if self.torn_tail is not None and i < len(segments) - 1:
                raise JournalCorruptError(
                    f"The journal segment {segment.path} ends in a damaged record "
                    f"({self.torn_tail.reason}) but is not the last segment; refusing to skip it."
                )

    def _segment_records(
        self, segment: Segment, start_offset: int, decode_from: int | None
    ) -> Generator[Any, None, None]:
        """The intact records of one segment from ``start_offset`` (its own offset)."""
        shift = segment.base
        try:
            f = open_segment(segment)
        except FileNotFoundError as exc:
            raise JournalError(f"The journal segment {segment.path} does not exist.") from exc
        try:
            if start_offset <= len(FILE_MAGIC):
                magic = f.read(len(FILE_MAGIC))
                if magic != FILE_MAGIC:
                    if FILE_MAGIC.startswith(magic):
                        self.torn_tail = TornTail(0, len(magic), "incomplete file header")
                        return
                    raise JournalError(
                        f"{segment.path} is not a trainbus journal (bad file header)."
                    )
                start_offset = len(FILE_MAGIC)
            f.seek(start_offset)
            buf = b""
            base = start_offset
            pos = 0
            eof = False
            unpack_from, header_size, crc32, pack_len_seq, decode = (
                _HEADER.unpack_from,
                _HEADER.size,
                zlib.crc32,
                _LEN_SEQ.pack,
                decode_msgpack,
            )
            while True:
                # The fast path for an intact record; anything unusual goes to _parse_at below.
                if len(buf) - pos >= header_size:
                    marker, flags, length, crc, seq = unpack_from(buf, pos)
                    end = pos + header_size + length
                    if marker == _MARKER and flags == 0 and end <= len(buf):
                        payload = buf[pos + header_size : end]
                        if crc32(payload, crc32(pack_len_seq(length, seq))) == crc:
                            if decode_from is None:
                                yield Record(shift + base + pos, shift + base + end, seq, payload)
                            elif seq >= decode_from:
                                try:
                                    event = decode(payload)
                                except msgspec.ValidationError as exc:
                                    at = Record(
                                        shift + base + pos, shift + base + end, seq, payload
                                    )
                                    raise _not_an_event(segment.path, at, exc) from exc
                                yield event
                            pos = end
                            continue
                record, reason = _parse_at(buf, pos)
                if record is not None:  # pragma: no cover -- the fast path takes intact records
                    raise JournalError("journal reader fast path and slow path disagree")
                if reason == "short" and not eof:
                    chunk = f.read(_READ_CHUNK)
                    eof = not chunk
                    buf = buf[pos:] + chunk
                    base += pos
                    pos = 0
                    continue
                if pos == len(buf):
                    return
                self._damaged(
                    f,
                    segment.path,
                    buf,
                    base,
                    pos,
                    "truncated record" if reason == "short" else reason,
                )
                return
        finally:
            f.close()

    def _damaged(
        self, f: BinaryIO, path: Path, buf: bytes, base: int, pos: int, reason: str
    ) -> None:
        """Tell a torn tail (nothing intact after the damage) from corruption, and record it.

        A torn tail is the remains of one interrupted write, so at most a burst of records; the
        search for intact records after the damage looks at a bounded window, and damage with
        more than that after it is corruption too.
        """
        rest = buf[pos:] + f.read(_MAX_RECORD + _READ_CHUNK)
        found = _next_intact_record(rest, 1)
        if found is not None or f.read(1):
            where = (
                "more data" if found is None else f"intact records at offset {base + pos + found}"
            )
            raise JournalCorruptError(
                f"The journal {path} has a damaged record at offset {base + pos} ({reason}) "
                f"followed by {where}; refusing to skip them."
            )
        self.torn_tail = TornTail(base + pos, len(rest), reason)
        log.warning("journal_torn_tail", path=str(path), offset=base + pos, dropped_bytes=len(rest))

    def read_from(self, seq: int = 0, *, start_offset: int = len(FILE_MAGIC)) -> Iterator[Event]:
        """Events with ``event.seq >= seq`` in journal order; records before it are not decoded."""
        return cast("Iterator[Event]", self._scan(start_offset, seq))

    def last_seq(self) -> int:
        """The seq of the last intact record, or -1 for an empty journal.

        Of a segmented journal only the last segment holding records is read.
        """
        last = -1
        if not self.path.is_dir():
            for record in self.records():
                last = record.seq
            return last
        for segment in reversed(list_segments(self.path)):
            for record in self.records(segment.base):
                last = record.seq
            if last >= 0:
                break
        return last


def _decode(path: Path, record: Record) -> Event:
    try:
        return decode_msgpack(record.payload)
    except msgspec.ValidationError as exc:
        raise _not_an_event(path, record, exc) from exc


def _not_an_event(path: Path, record: Record, exc: Exception) -> JournalError:
    return JournalError(
        f"The record with seq {record.seq} at offset {record.offset} of {path} passed its "
        f"checksum but is not an event this version understands: {exc}"
    )


def read_appended(
    path: str | os.PathLike[str], offset: int, *, max_bytes: int = 8 << 20
) -> tuple[list[Record], int]:
    """The whole records from ``offset`` (a record boundary) of a journal that another process
    may be appending to, and the position after the last of them; about ``max_bytes`` at a time.

    A record the writer has only partly written yet is left for the next call, without the torn
    tail warning a finished journal's reader gives; damage anywhere else is corruption. Offsets in
    the records are positions (``trainbus.bus._segments``). A segment is left for the next one
    only once it has nothing more to read and a later segment existed before it was read (the
    writer starts a segment only after finishing the one before).
    """
    path = Path(path)
    segments = list_segments(path)
    if not segments:
        return [], offset
    first_seq, at = split_position(offset)
    i = max(0, bisect.bisect_right([s.first_seq for s in segments], first_seq) - 1)
    if segments[i].first_seq != first_seq:
        at = 0
    found: list[Record] = []
    while True:
        segment = segments[i]
        records, end, finished = _read_appended_segment(segment, at, max_bytes)
        found += records
        max_bytes -= end - at
        if not finished or max_bytes <= 0 or i == len(segments) - 1:
            return found, segment.base + end
        i += 1
        at = 0


def _read_appended_segment(
    segment: Segment, offset: int, max_bytes: int
) -> tuple[list[Record], int, bool]:
    """The records read, the offset after them, and whether the segment was read to its end."""
    with open_segment(segment) as f:
        if offset < len(FILE_MAGIC):
            if f.read(len(FILE_MAGIC)) != FILE_MAGIC:
                return [], 0, False  # the header is not written yet (or not a journal: ask later)
            offset = len(FILE_MAGIC)
        f.seek(offset)
        data = f.read(max_bytes)
        if len(data) >= _HEADER.size:  # a first record longer than max_bytes: read all of it
            length = _HEADER.unpack_from(data, 0)[2]
            if _HEADER.size + length > len(data) and length <= _MAX_RECORD:
                data += f.read(_HEADER.size + length - len(data))
    records: list[Record] = []
    pos = 0
    shift = segment.base + offset
    while pos < len(data):
        record, reason = _parse_at(data, pos)
        if record is None:
            if reason == "short":
                break
            raise JournalCorruptError(
                f"The journal {segment.path} has a damaged record at offset {offset + pos} "
                f"({reason}) while its writer is still appending."
            )
        records.append(record._replace(offset=shift + record.offset, end=shift + record.end))
        pos = record.end
    return records, offset + pos, pos == len(data) < max_bytes


def decode_record(path: str | os.PathLike[str], record: Record) -> Event:
    """The event a record holds (``JournalError`` for one this version cannot read)."""
    return _decode(Path(path), record)


def repair_journal(path: str | os.PathLike[str]) -> RepairReport:
    """Truncate a torn tail so the journal can be appended to again; corruption still raises.

    Of a segmented journal only the live (last) segment can have a torn tail, and only it is
    read; ``records`` then counts that segment's records.
    """
    path = Path(path)
    if path.is_dir():
        segments = list_segments(path)
        if not segments or segments[-1].compressed:
            return RepairReport(path, 0, JournalReader(path).last_seq(), None)
        report = _repair_file(segments[-1].path)
        last = report.last_seq if report.records else JournalReader(path).last_seq()
        return RepairReport(path, report.records, last, report.torn_tail)
    return _repair_file(path)


def _repair_file(path: Path) -> RepairReport:
    reader = JournalReader(path)
    count = 0
    last = -1
    end = len(FILE_MAGIC)
    for record in reader.records():
        count += 1
        last = record.seq
        end = record.end
    tail = reader.torn_tail
    if tail is not None:
        with open(reader.path, "r+b") as f:
            if tail.offset == 0:
                f.truncate(0)
                f.write(FILE_MAGIC)
            else:
                f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "journal_repaired", path=str(reader.path), kept_records=count, **_tail_fields(tail)
        )
    return RepairReport(reader.path, count, last, tail)


def _tail_fields(tail: TornTail) -> dict[str, object]:
    return {"offset": tail.offset, "dropped_bytes": tail.dropped_bytes, "reason": tail.reason}


class SeqIndex:
    """A sparse seq -> offset index of a journal: where a reader starts to find a ``seq``.

    One record boundary every ``_INDEX_EVERY`` sequence numbers, noted by whoever sees the
    records go by (the writer as it appends, ``trainbus.bus._follow`` as it reads another
    process's journal); runners catching up ask ``offset_for``. Without an entry it answers the
    first record, which is always right, only slower.
    """

    def __init__(self) -> None:
        self.due = 0
        """The smallest ``seq`` whose record ``add`` should be told about next."""
        self._seqs: list[int] = []
        self._offsets: list[int] = []

    def add(self, seq: int, offset: int) -> None:
        """Note where the record carrying ``seq`` starts (called once ``seq >= due``)."""
        self._seqs.append(seq)
        self._offsets.append(offset)
        self.due = seq + _INDEX_EVERY

    def offset_for(self, seq: int) -> int:
        """A record boundary at or before the record carrying ``seq``."""
        i = bisect.bisect_right(self._seqs, seq) - 1
        return self._offsets[i] if i >= 0 else len(FILE_MAGIC)


class JournalWriter:
    """Appends events; owned by the bus's event loop, which calls it once per drained burst.

    Each ``append`` reaches the operating system (one ``os.write``) before it returns, so readers
    in this process see whole records and a crash of the process loses nothing already appended;
    ``fsync`` makes it survive a crash of the machine.
    """

    def __init__(self, path: Path, fd: int, offset: int, last_seq: int) -> None:
        self.path = path
        self._fd = fd
        self._offset = offset
        self.last_seq = last_seq
        self._index = SeqIndex()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> JournalWriter:
        """Open or create the journal at ``path``, repairing a torn tail left by a crash."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        last = -1
        if path.exists() and path.stat().st_size > 0:
            last = repair_journal(path).last_seq
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        offset = os.fstat(fd).st_size
        if offset == 0:
            os.write(fd, FILE_MAGIC)
            offset = len(FILE_MAGIC)
        return cls(path, fd, offset, last)

    def append(self, events: Sequence[Event]) -> None:
        """Append ``events`` (seq strictly increasing) as one write."""
        if not events:
            return
        parts: list[bytes] = []
        add = parts.append
        encode, pack, pack_len_seq, crc32 = _encode, _HEADER.pack, _LEN_SEQ.pack, zlib.crc32
        offset = self._offset
        index = self._index
        due = index.due
        noted: list[tuple[int, int]] = []  # index entries, kept only once the write succeeded
        last = self.last_seq
        for event in events:
            seq = event.seq
            if seq <= last:
                raise JournalError(
                    f"Event seq {seq} does not follow the journal's last seq {last}; "
                    "sequence numbers must increase strictly."
                )
            payload = encode(event)
            length = len(payload)
            if seq >= due:
                noted.append((seq, offset))
                due = seq + _INDEX_EVERY
            offset += _HEADER.size + length
            add(pack(_MARKER, 0, length, crc32(payload, crc32(pack_len_seq(length, seq))), seq))
            add(payload)
            last = seq
        data = b"".join(parts)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._undo_partial_write(exc)
        for seq, at in noted:
            index.add(seq, at)
        self._offset = offset
        self.last_seq = last

    def _undo_partial_write(self, exc: OSError) -> NoReturn:
        """Cut what a failed write left (a full disk) so the file ends on a whole record again."""
        with contextlib.suppress(OSError):  # the reader cuts a torn tail on the next open anyway
            os.ftruncate(self._fd, self._offset)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise JournalError(
            f"Could not append to the journal {self.path}: "
            + ("the disk is full" if full else str(exc))
            + f"; it ends whole at seq {self.last_seq}."
        ) from exc

    def offset_for(self, seq: int) -> int:
        """A record boundary at or before the record carrying ``seq``: where a reader starts."""
        return self._index.offset_for(seq)

    @property
    def size(self) -> int:
        """The file's length: the header and every record appended."""
        return self._offset

    def fsync(self) -> None:
        """Make every appended record durable on disk (nothing to do once closed: close fsyncs)."""
        fd = self._fd
        if fd >= 0:
            os.fsync(fd)

    def close(self) -> None:
        """Fsync and close; idempotent."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
