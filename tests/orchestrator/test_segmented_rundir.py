"""``sync``, ``show`` and ``plot`` read run directories of every journal layout.

A run written now keeps a segmented journal (``journal/``); a run written before segments keeps
one file (``journal.tbj``). Both must stay readable, whatever mix of plain and compressed segments
the directory holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from tests.orchestrator.test_show_plot import make_run
from trainbus.bus import JournalReader, JournalSettings, JournalWriter
from trainbus.bus._segmented import SegmentedJournalWriter
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.plot import plot_run
from trainbus.orchestrator.rundir import RunDir
from trainbus.orchestrator.show import summarize
from trainbus.orchestrator.sync import sync_run


def _rewrite(run_dir: RunDir, *, legacy: bool) -> int:
    """Rewrite the run's journal as one old-style file, or as small, compressed segments."""
    events = list(JournalReader(run_dir.journal_path).read_from())
    shutil.rmtree(run_dir.path / "journal")
    if legacy:
        writer = JournalWriter.open(run_dir.path / "journal.tbj")
        writer.append(events)
        writer.close()
        return len(events)
    settings = JournalSettings(segment_bytes=4096)
    segmented = SegmentedJournalWriter.open(
        run_dir.path / "journal", settings=settings, acknowledged=lambda: len(events)
    )
    for event in events:
        segmented.append([event])
    segmented.close()
    return len(events)


async def test_a_run_directory_of_an_older_version_still_syncs_and_shows(tmp_path: Path) -> None:
    """A single-file ``journal.tbj`` is found, shown, plotted and synced as before."""
    run_dir = await make_run(tmp_path, steps=6)
    before = summarize(run_dir)
    count = _rewrite(run_dir, legacy=True)
    assert run_dir.journal_path == run_dir.path / "journal.tbj"
    (run_dir.cursor_dir / "rec.cursor").unlink()
    assert summarize(run_dir).global_step == before.global_step == 6
    assert plot_run(run_dir, tmp_path / "curves.png").stat().st_size > 1000
    sink = RecordingSink("rec")
    with anyio.fail_after(30):
        reports = await sync_run(run_dir.path, sinks=[sink])
    assert [e.seq for e in sink.received] == list(range(count))
    assert reports["rec"].undelivered == 0


async def test_show_plot_and_sync_read_across_compressed_segments(tmp_path: Path) -> None:
    """A journal in many segments, most gzipped, reads as the one it replaced."""
    run_dir = await make_run(tmp_path, steps=40)
    before = summarize(run_dir)
    count = _rewrite(run_dir, legacy=False)
    names = sorted(p.name for p in run_dir.journal_path.iterdir())
    assert len(names) > 2 and all(n.endswith(".tbj.gz") for n in names[:-1])
    after = summarize(run_dir)
    assert (after.global_step, after.last_seq, after.last_train) == (
        before.global_step,
        before.last_seq,
        before.last_train,
    )
    assert plot_run(run_dir, tmp_path / "curves.png").stat().st_size > 1000
    (run_dir.cursor_dir / "rec.cursor").write_text("5\n")
    sink = RecordingSink("rec")
    with anyio.fail_after(30):
        await sync_run(run_dir.path, sinks=[sink])
    assert [e.seq for e in sink.received] == list(range(6, count))
