"""Following a journal another process appends to (the sink process's reading side)."""

from __future__ import annotations

from pathlib import Path

from trainbus.bus._events import Log
from trainbus.bus._follow import LiveJournal
from trainbus.bus._journal import JournalReader, JournalWriter, read_appended


def test_live_journal_reads_only_whole_records_while_the_writer_appends(tmp_path: Path) -> None:
    """A half-written record is left for the next poll; what was read is never read again."""
    path = tmp_path / "journal.tbj"
    source = LiveJournal(path)
    assert source.poll() == [] and source.last_seq == -1  # no file yet
    writer = JournalWriter.open(path)
    first = [Log(run_id="r", seq=i, time=1.0, logs={"loss": float(i)}) for i in range(3)]
    writer.append(first)
    assert source.poll() == first and source.last_seq == 2
    whole = path.read_bytes()
    writer.append([Log(run_id="r", seq=3, time=1.0, logs={"loss": 3.0})])
    complete = path.read_bytes()
    path.write_bytes(complete[: len(whole) + 7])  # the writer is mid-way through seq 3
    assert source.poll() == [] and source.last_seq == 2
    path.write_bytes(complete)
    assert [e.seq for e in source.poll()] == [3] and source.last_seq == 3
    assert source.poll() == []
    assert source.offset_for(3) == 8  # the index starts at the first record
    writer.close()


def test_read_appended_reads_a_bounded_chunk_at_a_time_and_any_single_record_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.tbj"
    writer = JournalWriter.open(path)
    big = Log(run_id="r", seq=0, time=1.0, logs={f"k{i}": float(i) for i in range(500)})
    small = [Log(run_id="r", seq=i, time=1.0, logs={"loss": 1.0}) for i in range(1, 40)]
    writer.append([big, *small])
    writer.close()
    offset, seqs, calls = 0, [], 0
    while True:
        records, offset = read_appended(path, offset, max_bytes=256)
        if not records:
            break
        calls += 1
        seqs += [r.seq for r in records]
    assert seqs == list(range(40))  # the first record alone is far over 256 bytes
    assert calls > 3 and offset == path.stat().st_size
    source = LiveJournal(path)
    source.skip_existing()
    assert source.last_seq == 39 and source.poll() == []


def test_the_writer_and_a_follower_index_the_journal_alike(tmp_path: Path) -> None:
    """A follower reading a journal finds the same record boundaries the writer noted, and each
    one is where a reader finds that seq."""
    path = tmp_path / "journal.tbj"
    writer = JournalWriter.open(path)
    for start in range(0, 10_000, 700):  # bursts of the bus's shape, not aligned to the index
        writer.append(
            [
                Log(run_id="r", seq=i, time=1.0, logs={"loss": 1.0})
                for i in range(start, start + 700)
            ]
        )
    source = LiveJournal(path)
    assert len(source.poll()) == 10_500
    for seq in (0, 4_095, 4_096, 9_000, 10_499):
        offset = writer.offset_for(seq)
        assert offset == source.offset_for(seq)
        first = next(JournalReader(path).records(offset)).seq
        assert first <= seq and (seq < 4_096 or first > seq - 4_096)
    assert writer.offset_for(9_000) > writer.offset_for(4_096) > writer.offset_for(0)
    writer.close()
