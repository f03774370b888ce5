"""The segmented journal: rotation, compression of acknowledged segments, retention, reading."""

from __future__ import annotations

import zlib
from pathlib import Path

import anyio
import pytest

from tests.bus.conftest import MakeBus
from trainbus.bus import (
    Bus,
    ConfigurationError,
    JournalCorruptError,
    JournalError,
    JournalReader,
    JournalSettings,
    JournalWriter,
    Log,
    StepEnd,
    repair_journal,
    replay,
)
from trainbus.bus._follow import LiveJournal
from trainbus.bus._journal import _HEADER, _LEN_SEQ, _MARKER
from trainbus.bus._segmented import SegmentedJournalWriter, compact_segments
from trainbus.bus.testing import RecordingSink

SMALL = JournalSettings(segment_bytes=4096)
"""About 60 events a segment: a few hundred events make several segments."""


def _events(start: int, count: int) -> list[StepEnd]:
    return [
        StepEnd(run_id="r", seq=s, time=1.0, global_step=s) for s in range(start, start + count)
    ]


async def _publish_from_thread(bus: Bus, count: int) -> None:
    def train() -> None:
        for step in range(count):
            bus.emit(StepEnd, global_step=step)

    await anyio.to_thread.run_sync(train)


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _write(path: Path, count: int, settings: JournalSettings = SMALL, acked: int = -1) -> None:
    writer = SegmentedJournalWriter.open(path, settings=settings, acknowledged=lambda: acked)
    for start in range(0, count, 10):
        writer.append(_events(start, min(10, count - start)))
    writer.close()


def test_the_journal_rotates_into_segments_named_by_their_first_seq(tmp_path: Path) -> None:
    """Past ``segment_bytes`` a new segment starts, named by its first seq; reading spans all."""
    path = tmp_path / "journal"
    _write(path, 500)
    names = _names(path)
    assert len(names) > 3 and all(n.endswith(".tbj") for n in names)
    firsts = [int(n.split(".")[0]) for n in names]
    assert firsts[0] == 0 and firsts == sorted(firsts)
    assert [e.seq for e in JournalReader(path).read_from()] == list(range(500))
    assert JournalReader(path).last_seq() == 499
    for first in firsts[1:]:  # each segment starts with the seq it is named after
        segment = JournalReader(path / f"{first:012d}.tbj")
        assert next(segment.records()).seq == first


def test_offsets_are_positions_a_reader_starts_from_across_segments(tmp_path: Path) -> None:
    """The writer's offset for a seq, in any segment, is where a reader finds that seq or before."""
    path = tmp_path / "journal"
    writer = SegmentedJournalWriter.open(path, settings=SMALL)
    for start in range(0, 600, 10):
        writer.append(_events(start, 10))
    for seq in (0, 61, 250, 599):
        first = next(JournalReader(path).records(writer.offset_for(seq))).seq
        assert first <= seq and seq - first < 70
    writer.close()


def test_acknowledged_segments_are_compressed_and_read_back(tmp_path: Path) -> None:
    """Segments every sink acknowledged are gzipped, the last one too once the writer closed."""
    path = tmp_path / "journal"
    _write(path, 500, acked=499)
    names = _names(path)
    assert all(n.endswith(".tbj.gz") for n in names)
    assert [e.seq for e in JournalReader(path).read_from(0)] == list(range(500))
    assert [e.seq for e in JournalReader(path).read_from(321)] == list(range(321, 500))
    plain = tmp_path / "plain"
    _write(plain, 500, acked=-1)
    plain_bytes = sum(p.stat().st_size for p in plain.iterdir())
    assert sum(p.stat().st_size for p in path.iterdir()) < plain_bytes / 3


def test_only_acknowledged_segments_are_compressed(tmp_path: Path) -> None:
    """A segment holding a seq some sink has not acknowledged stays plain."""
    path = tmp_path / "journal"
    _write(path, 500, acked=200)
    segments = [(int(n.split(".")[0]), n.endswith(".gz")) for n in _names(path)]
    nexts = [first for first, _ in segments[1:]] + [500]
    for (first, compressed), nxt in zip(segments, nexts, strict=True):
        assert compressed == (nxt - 1 <= 200), (first, compressed)
    assert any(c for _, c in segments) and not all(c for _, c in segments)


def test_segments_are_deleted_only_under_retention(tmp_path: Path) -> None:
    """Without a retention setting every segment stays; with one, only the newest acknowledged."""
    kept, pruned = tmp_path / "kept", tmp_path / "pruned"
    _write(kept, 500, acked=499)
    _write(pruned, 500, settings=JournalSettings(segment_bytes=4096, retain_segments=1), acked=499)
    all_names = _names(kept)
    assert _names(pruned) == all_names[-2:]  # the newest finished segment and the live one
    assert [e.seq for e in JournalReader(pruned).read_from()][-1] == 499
    events = list(JournalReader(pruned).read_from())
    assert events[0].seq == int(all_names[-2].split(".")[0])  # reading starts at the oldest kept


def test_retention_never_deletes_what_a_sink_has_not_acknowledged(tmp_path: Path) -> None:
    """A segment past the slowest cursor survives retention 0."""
    path = tmp_path / "journal"
    _write(path, 500, acked=-1)
    compact_segments(path, 150, JournalSettings(retain_segments=0))
    assert JournalReader(path).read_from().__next__().seq <= 150
    assert [e.seq for e in JournalReader(path).read_from(151)] == list(range(151, 500))


def test_settings_come_from_the_environment_and_bad_values_are_named() -> None:
    """``TRAINBUS_JOURNAL_*`` variables set the settings; a bad one is an error naming it."""
    settings = JournalSettings.from_env(
        {"TRAINBUS_JOURNAL_SEGMENT_MB": "8", "TRAINBUS_JOURNAL_RETAIN_SEGMENTS": "3"}
    )
    assert settings == JournalSettings(segment_bytes=8 << 20, retain_segments=3)
    assert JournalSettings.from_env({}) == JournalSettings()
    with pytest.raises(ConfigurationError, match="TRAINBUS_JOURNAL_RETAIN_SEGMENTS"):
        JournalSettings.from_env({"TRAINBUS_JOURNAL_RETAIN_SEGMENTS": "-1"})
    with pytest.raises(ConfigurationError, match="segment_bytes"):
        JournalSettings(segment_bytes=10)


def test_a_torn_tail_on_the_live_segment_is_truncated_and_appending_goes_on(
    tmp_path: Path,
) -> None:
    """A crash mid-write leaves a torn live segment: readers stop before it, reopening repairs."""
    path = tmp_path / "journal"
    _write(path, 300, acked=298)  # the last event unacknowledged: the live segment stays plain
    live = path / _names(path)[-1]
    assert live.suffix == ".tbj"
    live.write_bytes(live.read_bytes() + b"\xe7\xb5\x00\x00\x40")  # half a header
    reader = JournalReader(path)
    assert [e.seq for e in reader.read_from()] == list(range(300))
    assert reader.torn_tail is not None
    writer = SegmentedJournalWriter.open(path, settings=SMALL)
    assert writer.last_seq == 299
    writer.append(_events(300, 5))
    writer.close()
    reader = JournalReader(path)
    assert [e.seq for e in reader.read_from()] == list(range(305)) and reader.torn_tail is None


def test_damage_at_the_end_of_a_finished_segment_is_corruption(tmp_path: Path) -> None:
    """Only the live segment may end torn; a damaged finished segment is never skipped."""
    path = tmp_path / "journal"
    _write(path, 300)
    first = path / _names(path)[0]
    first.write_bytes(first.read_bytes()[:-3])
    with pytest.raises(JournalCorruptError, match="not the last segment"):
        list(JournalReader(path).read_from())


def test_repair_of_an_empty_live_segment_reads_the_last_seq_before_it(tmp_path: Path) -> None:
    """A crash just after a rotation leaves an empty live segment; the last seq is still found."""
    path = tmp_path / "journal"
    _write(path, 300)
    (path / "000000000300.tbj").write_bytes(b"TBJRNL")  # even its header only half written
    assert repair_journal(path).last_seq == 299
    writer = SegmentedJournalWriter.open(path, settings=SMALL)
    writer.append(_events(300, 1))
    writer.close()
    assert JournalReader(path).last_seq() == 300


def test_a_follower_reads_across_rotated_and_compressed_segments(tmp_path: Path) -> None:
    """The live follower crosses into each new segment and reads segments compressed under it."""
    path = tmp_path / "journal"
    source = LiveJournal(path)
    writer = SegmentedJournalWriter.open(path, settings=SMALL, acknowledged=lambda: -1)
    seen: list[int] = []
    for start in range(0, 400, 10):
        writer.append(_events(start, 10))
        if start % 70 == 0:
            seen += [e.seq for e in source.poll()]
    compact_segments(path, 10_000, SMALL)  # every finished segment compressed behind its back
    writer.append(_events(400, 10))
    seen += [e.seq for e in source.poll()]
    writer.close()
    assert seen == list(range(410)) and source.last_seq == 409
    assert any(n.endswith(".gz") for n in _names(path))


async def test_a_sink_that_fell_behind_catches_up_across_segments(make_bus: MakeBus) -> None:
    """A blocked sink catches up from the journal across rotated segments; the live sink's
    acknowledgement alone does not compress what the slow one still needs."""
    behind, live = RecordingSink("behind", max_batch_size=50), RecordingSink("live")
    behind.block()
    with anyio.fail_after(30):
        async with make_bus([behind, live], queue_size=20, journal_settings=SMALL) as bus:
            try:
                for _ in range(12):  # bursts of 50: a segment rotates between bursts
                    await _publish_from_thread(bus, 50)
                    await bus.drain()
                await live.wait_for(600)
                journal = bus.journal_path
                assert journal is not None
                assert len(_names(journal)) > 5
                assert not any(n.endswith(".gz") for n in _names(journal))
            finally:
                behind.release()
            await behind.wait_for(600)
    assert [e.seq for e in behind.received] == list(range(600))
    assert all(n.endswith(".tbj.gz") for n in _names(journal))  # both acknowledged by the close


async def test_replay_delivers_a_journal_of_plain_and_compressed_segments(tmp_path: Path) -> None:
    """``trainbus sync``'s replay reads compressed and plain segments in one pass."""
    path = tmp_path / "journal"
    _write(path, 500, acked=250)
    assert any(n.endswith(".gz") for n in _names(path))
    assert any(n.endswith(".tbj") for n in _names(path)[:-1])
    sink = RecordingSink("late")
    with anyio.fail_after(30):
        reports = await replay(path, [sink], cursor_dir=tmp_path / "cursors")
    assert [e.seq for e in sink.received] == list(range(500))
    assert reports["late"].undelivered == 0


async def test_a_bus_appends_to_a_single_file_journal_of_an_older_run(tmp_path: Path) -> None:
    """A journal written before segments stays one file; the bus continues it."""
    path = tmp_path / "journal.tbj"
    writer = JournalWriter.open(path)
    writer.append([Log(run_id="r", seq=0, time=1.0, logs={"loss": 1.0})])
    writer.close()
    sink = RecordingSink()
    with anyio.fail_after(30):
        async with Bus(run_id="r", journal_path=path, sinks=[sink], journal_settings=SMALL) as bus:
            await _publish_from_thread(bus, 200)
            await sink.wait_for(201)
    assert path.is_file()
    assert [e.seq for e in JournalReader(path).read_from()] == list(range(201))


def test_a_journal_compressed_whole_at_close_continues_in_a_new_segment(tmp_path: Path) -> None:
    """Reopening a delivered run's fully compressed journal continues its seq in a new segment."""
    path = tmp_path / "journal"
    _write(path, 100, acked=99)
    assert all(n.endswith(".gz") for n in _names(path))
    writer = SegmentedJournalWriter.open(path, settings=SMALL, acknowledged=lambda: -1)
    assert writer.last_seq == 99
    writer.append(_events(100, 3))
    writer.close()
    assert _names(path)[-1] == "000000000100.tbj"
    assert [e.seq for e in JournalReader(path).read_from()] == list(range(103))


def test_an_empty_journal_is_left_plain_at_close(tmp_path: Path) -> None:
    """A journal closed without events keeps its one plain, empty segment."""
    path = tmp_path / "journal"
    SegmentedJournalWriter.open(path, settings=SMALL).close()
    assert _names(path) == ["000000000000.tbj"]
    assert JournalReader(path).last_seq() == -1


def test_a_checksummed_record_that_is_no_event_is_named_when_read(tmp_path: Path) -> None:
    """Reading events stops at an intact record this version cannot decode, naming its seq."""
    path = tmp_path / "journal"
    _write(path, 20)
    payload = b"\x81\xa4type\xa4nope"
    crc = zlib.crc32(payload, zlib.crc32(_LEN_SEQ.pack(len(payload), 20)))
    live = path / _names(path)[-1]
    with open(live, "ab") as f:
        f.write(_HEADER.pack(_MARKER, 0, len(payload), crc, 20) + payload)
    assert [r.seq for r in JournalReader(path).records()][-1] == 20
    with pytest.raises(JournalError, match=r"seq 20 .* not an event this version understands"):
        list(JournalReader(path).read_from(15))


async def test_cursor_files_of_sinks_elsewhere_hold_compression_back(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """A bus without sinks of its own (they run in a sink process) compresses only what the
    cursor files in its cursor directory have acknowledged."""
    cursors = tmp_path / "cursors"
    cursors.mkdir()
    (cursors / "elsewhere.cursor").write_text("-1\n")
    with anyio.fail_after(30):
        async with make_bus([], journal_settings=SMALL) as bus:
            for _ in range(6):
                await _publish_from_thread(bus, 50)
                await bus.drain()
    journal = tmp_path / "journal.tbj"
    assert len(_names(journal)) > 3 and not any(n.endswith(".gz") for n in _names(journal))
    (cursors / "elsewhere.cursor").write_text("299\n")
    async with make_bus([], journal_settings=SMALL):
        pass
    assert all(n.endswith(".tbj.gz") for n in _names(journal))


def test_fsync_racing_a_rotation_is_not_an_error(tmp_path: Path) -> None:
    """``Bus.fsync`` runs in a worker thread while the loop may rotate: fsyncing a segment that
    the rotation closed (and fsynced) meanwhile succeeds."""
    writer = SegmentedJournalWriter.open(tmp_path / "journal", settings=SMALL)
    writer.append(_events(0, 100))
    live = writer._live
    writer.append(_events(100, 1))  # rotates: the segment looked up above is closed
    assert live is not writer._live
    live.fsync()
    writer.close()
