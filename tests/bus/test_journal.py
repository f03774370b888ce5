"""The journal: framing, seeking by seq, torn-tail detection and repair, corruption refusal."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainbus.bus._errors import JournalCorruptError, JournalError
from trainbus.bus._events import Log, StepEnd
from trainbus.bus._journal import FILE_MAGIC, JournalReader, JournalWriter, repair_journal


def _events(n: int, start: int = 0) -> list[StepEnd | Log]:
    out: list[StepEnd | Log] = []
    for seq in range(start, start + n):
        if seq % 3 == 0:
            out.append(Log(run_id="r", seq=seq, time=1.0, global_step=seq, logs={"loss": seq / 7}))
        else:
            out.append(StepEnd(run_id="r", seq=seq, time=1.0, global_step=seq))
    return out


def _write(path: Path, n: int, chunk: int = 7) -> list[StepEnd | Log]:
    events = _events(n)
    writer = JournalWriter.open(path)
    for i in range(0, n, chunk):
        writer.append(events[i : i + chunk])
    writer.close()
    return events


def test_written_events_read_back_in_order(tmp_path: Path) -> None:
    """Events appended in several bursts read back equal and in order."""
    events = _write(tmp_path / "j.tbj", 50)
    assert list(JournalReader(tmp_path / "j.tbj").read_from()) == events


def test_read_from_seq_and_offset_hint(tmp_path: Path) -> None:
    """read_from(seq) starts at that seq, also when given the writer's offset hint."""
    events = _events(10_000)
    writer = JournalWriter.open(tmp_path / "j.tbj")
    writer.append(events)
    hint = writer.offset_for(9_000)
    writer.close()
    reader = JournalReader(tmp_path / "j.tbj")
    assert list(reader.read_from(9_990)) == events[9_990:]
    assert list(reader.read_from(9_000, start_offset=hint)) == events[9_000:]
    assert hint > len(FILE_MAGIC)


def test_writer_refuses_non_increasing_seq(tmp_path: Path) -> None:
    """Appending an event whose seq does not follow the last one raises JournalError."""
    writer = JournalWriter.open(tmp_path / "j.tbj")
    writer.append(_events(3))
    with pytest.raises(JournalError, match="increase strictly"):
        writer.append(_events(1, start=2))
    writer.close()


def test_reopened_writer_appends_after_existing_records(tmp_path: Path) -> None:
    """A writer reopened on an existing journal continues after its last seq."""
    path = tmp_path / "j.tbj"
    first = _write(path, 5)
    writer = JournalWriter.open(path)
    assert writer.last_seq == 4
    more = _events(3, start=5)
    writer.append(more)
    writer.close()
    assert list(JournalReader(path).read_from()) == first + more


def test_not_a_journal_is_refused(tmp_path: Path) -> None:
    """A file without the journal header is rejected with JournalError, not parsed."""
    path = tmp_path / "j.tbj"
    path.write_bytes(b"hello world, this is not a journal")
    with pytest.raises(JournalError, match="not a trainbus journal"):
        list(JournalReader(path).read_from())


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), cut=st.integers(1, 400), junk=st.binary(max_size=64))
def test_torn_tail_is_detected_and_truncated(n: int, cut: int, junk: bytes) -> None:
    """A file cut anywhere (plus junk) reads as an intact prefix, is reported, and repairs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.tbj"
        events = _write(path, n)
        data = path.read_bytes()
        cut_at = max(len(FILE_MAGIC) + 1, len(data) - cut)
        damaged = data[:cut_at] + junk
        path.write_bytes(damaged)
        reader = JournalReader(path)
        read = list(reader.read_from())
        assert read == events[: len(read)]
        intact_end = max((r.end for r in reader.records()), default=len(FILE_MAGIC))
        assert (reader.torn_tail is None) == (intact_end == len(damaged))
        report = repair_journal(path)
        assert report.records == len(read)
        assert list(JournalReader(path).read_from()) == read
        assert JournalReader(path).torn_tail is None
        writer = JournalWriter.open(path)
        writer.append(_events(1, start=len(read)))
        writer.close()
        assert len(list(JournalReader(path).read_from())) == len(read) + 1


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 30), back=st.integers(1, 200), flip=st.integers(1, 255))
def test_corrupted_byte_is_never_decoded(n: int, back: int, flip: int) -> None:
    """Flipping one byte either stops reading at the damage or raises JournalCorruptError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.tbj"
        events = _write(path, n)
        data = bytearray(path.read_bytes())
        pos = max(len(FILE_MAGIC), len(data) - back)
        data[pos] ^= flip
        path.write_bytes(bytes(data))
        try:
            read = list(JournalReader(path).read_from())
        except JournalCorruptError:
            return
        assert read == events[: len(read)]
        assert len(read) < n


def test_damage_before_intact_records_raises(tmp_path: Path) -> None:
    """Corruption in the middle, with intact records after it, raises instead of skipping them."""
    path = tmp_path / "j.tbj"
    _write(path, 100)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match="followed by intact records"):
        list(JournalReader(path).read_from())
    with pytest.raises(JournalCorruptError):
        repair_journal(path)


def test_a_full_disk_leaves_the_journal_whole_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short by ENOSPC is undone: one error naming the file and the full disk,
    every earlier record still reads back, and appending works again once there is room."""
    import errno
    import os

    path = tmp_path / "j.tbj"
    writer = JournalWriter.open(path)
    events = _events(30)
    writer.append(events[:10])
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 8:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(JournalError, match=r"j\.tbj: the disk is full; it ends whole at seq 9"):
        writer.append(events[10:20])
    monkeypatch.setattr(os, "write", real_write)
    assert [e.seq for e in JournalReader(path).read_from(0)] == list(range(10))
    writer.append(events[10:30])
    writer.close()
    assert [e.seq for e in JournalReader(path).read_from(0)] == list(range(30))
