"""Runs of several ranks: one run id per job, journals by need, and reading world rank zero's run.

Built with the orchestrator directly for ranks 0 and 1 (no torch, no process group); the real
``torchrun`` job is in ``tests/trainer/test_run_identity_distributed.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Log, RunFinished, RunStarted, StepEnd
from trainbus.bus._journal import JournalReader
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.cli import main
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import RunDir, find_job, find_run_dir
from trainbus.orchestrator.show import format_summary, summarize
from trainbus.orchestrator.sync import sync_run

STEPS = 5


def scripted(steps: int = STEPS, fail: bool = False) -> Callable[[Bus], int]:
    """A torch-free stand-in for one rank's training: the events a trainer publishes."""

    def work(bus: Bus) -> int:
        bus.emit(RunStarted, run_name="ranks", config={})
        for step in range(1, steps + 1):
            bus.emit(StepEnd, global_step=step)
            bus.emit(Log, global_step=step, logs={"loss": 1.0 / step})
        if fail:  # as the Trainer does: the failure is published, then raised
            error = RuntimeError("rank failed on purpose")
            bus.emit(
                RunFinished, global_step=steps, status="failed", error=f"RuntimeError: {error}"
            )
            raise error
        bus.emit(RunFinished, global_step=steps, status="completed")
        return steps

    return work


def journal_of(run_dir: RunDir) -> list[object]:
    path = run_dir.journal_path
    return list(JournalReader(path).read_from(0)) if path.exists() else []


async def run_rank(out: Path, run_id: str, rank: int, **kwargs: object) -> Orchestrator:
    """One rank of a two-rank job, finished."""
    with anyio.fail_after(30):
        orch = Orchestrator(
            output_dir=out, run_id=run_id, report_to="none", rank=rank, world_size=2, **kwargs
        )  # type: ignore[arg-type]  # kwargs are Orchestrator's keyword arguments
        async with orch:
            await orch.run_in_thread(scripted())
    return orch


async def test_other_ranks_journal_nothing_by_default_and_rank_zero_everything(
    tmp_path: Path,
) -> None:
    """Rank 0 journals every event; rank 1, without sinks of its own, journals none of a run
    that ends well, and its run.json still says how it ended."""
    zero = await run_rank(tmp_path, "job", 0)
    one = await run_rank(tmp_path, "job", 1)
    assert len(journal_of(zero.run_dir)) == 2 * STEPS + 2
    assert journal_of(one.run_dir) == []
    record = one.run_dir.read_record()
    assert (record.status, record.journal_events) == ("completed", "errors")
    assert zero.run_dir.read_record().journal_events == "full"
    shown = format_summary(summarize(one.run_dir), one.run_dir)
    assert "rank       1 of 2" in shown
    assert "journal    its own failures only (TRAINBUS_RANK_JOURNAL=errors)" in shown
    assert "journal " not in format_summary(summarize(zero.run_dir), zero.run_dir)


async def test_another_rank_journals_its_own_failure(tmp_path: Path) -> None:
    """A failing rank other than zero journals the RunFinished that carries its error."""
    with anyio.fail_after(30):
        orch = Orchestrator(
            output_dir=tmp_path, run_id="job", report_to="none", rank=1, world_size=2
        )
        with pytest.raises(RuntimeError, match="on purpose"):
            async with orch:
                await orch.run_in_thread(scripted(fail=True))
    [event] = journal_of(orch.run_dir)
    assert isinstance(event, RunFinished)
    assert event.status == "failed"
    assert "on purpose" in (event.error or "")
    assert orch.run_dir.read_record().status == "failed"


@pytest.mark.parametrize(("setting", "expected"), [("full", 2 * STEPS + 2), ("none", 0)])
async def test_the_rank_journal_setting_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, expected: int
) -> None:
    """``TRAINBUS_RANK_JOURNAL=full`` journals everything on rank 1, ``none`` writes no journal."""
    monkeypatch.setenv("TRAINBUS_RANK_JOURNAL", setting)
    orch = await run_rank(tmp_path, "job", 1)
    assert len(journal_of(orch.run_dir)) == expected
    assert orch.run_dir.journal_path.exists() == (setting == "full")
    assert orch.run_dir.read_record().status == "completed"


async def test_a_rank_with_a_sink_of_its_own_journals_in_full(tmp_path: Path) -> None:
    """A per-rank sink reads the journal when it falls behind, so its rank keeps every event,
    and the sink receives the whole stream."""
    local = RecordingSink("local", world_rank_zero_only=False)
    orch = await run_rank(tmp_path, "job", 1, sinks=[local])
    assert len(journal_of(orch.run_dir)) == 2 * STEPS + 2
    assert len(local.received) == 2 * STEPS + 2
    assert orch.run_dir.read_record().journal_events == "full"


def test_a_bad_rank_journal_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt setting is one error naming the variable and the choices."""
    monkeypatch.setenv("TRAINBUS_RANK_JOURNAL", "some")
    with pytest.raises(ConfigurationError, match=r"TRAINBUS_RANK_JOURNAL='some'.*full/errors/none"):
        Orchestrator(output_dir="unused", report_to="none")
    with pytest.raises(ConfigurationError, match="rank_journal must be one of"):
        Orchestrator(output_dir="unused", report_to="none", rank_journal="all")  # type: ignore[arg-type]


def test_a_filtered_journal_is_refused_with_sinks() -> None:
    """The bus refuses to filter the journal a sink would read back from."""
    with pytest.raises(ConfigurationError, match="journal_filter"):
        Bus(run_id="r", sinks=[RecordingSink("s")], journal_filter=lambda e: False)


async def test_sync_on_an_output_dir_delivers_rank_zeros_backlog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 0's sink is behind at close; sync on the output_dir delivers rank 0's events (not
    rank 1's, whose directory name sorts last), and the CLI names rank 1's directory."""
    stuck = RecordingSink("rec", max_batch_size=4)
    with anyio.fail_after(30):
        orch = Orchestrator(
            output_dir=tmp_path,
            run_id="job",
            report_to="none",
            rank=0,
            world_size=2,
            sinks=[stuck],
            flush_timeout=0.2,
        )
        async with orch:
            stuck.block()
            await orch.run_in_thread(scripted())
    zero = orch.run_dir
    one = (await run_rank(tmp_path, "job", 1)).run_dir
    assert sorted(p.name for p in (zero.path, one.path))[-1] == one.path.name
    assert stuck.received == []

    job = find_job(tmp_path)
    assert job.chosen.path == zero.path
    assert [d.path for d, _ in job.others] == [one.path]
    later = RecordingSink("rec")
    with anyio.fail_after(30):
        reports = await sync_run(tmp_path, sinks=[later])
    assert [e.seq for e in later.received] == [e.seq for e in journal_of(zero)]  # type: ignore[attr-defined]
    assert reports["rec"].undelivered == 0

    assert main(["show", str(tmp_path)]) == 0
    shown = capsys.readouterr()
    assert f"directory  {zero.path}" in shown.out
    assert f"other ranks: {one.path.name} (completed)" in shown.err


async def test_the_latest_job_is_found_by_time_not_by_name(tmp_path: Path) -> None:
    """Of two jobs, the one created last is read, even when its run id sorts first."""
    await run_rank(tmp_path, "job-b", 0)
    await run_rank(tmp_path, "job-b", 1)
    await run_rank(tmp_path, "job-a", 1)  # rank 1 of the newer job opens first: still rank 0 read
    newer = await run_rank(tmp_path, "job-a", 0)
    assert find_run_dir(tmp_path).path == newer.run_dir.path


async def test_without_rank_zeros_directory_the_lowest_rank_is_read_and_said(
    tmp_path: Path,
) -> None:
    """On a node whose output_dir holds only rank 1 (no shared storage), that run is read and
    the line says rank 0's directory is elsewhere."""
    one = await run_rank(tmp_path, "job", 1)
    job = find_job(tmp_path)
    assert job.chosen.path == one.run_dir.path
    assert "rank 0's directory is not in this output_dir" in (job.describe_others() or "")


def test_the_run_id_is_fresh_per_launch_and_continued_on_purpose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's rendezvous id is never the run id (it is recorded for information only);
    ``TRAINBUS_RUN_ID`` continues a run on purpose."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "reused-rdzv")
    first = Orchestrator(output_dir=tmp_path, report_to="none")
    second = Orchestrator(output_dir=tmp_path, report_to="none")
    assert "reused-rdzv" not in (first.run_id, second.run_id)
    assert first.run_id != second.run_id
    with capture_logs() as logs:
        ranked = Orchestrator(output_dir=tmp_path, report_to="none", rank=0, world_size=2)
    assert any(e["event"] == "run_id_not_shared" for e in logs)  # no process group to agree over
    _, record = ranked._prepare()
    assert record.rendezvous_id == "reused-rdzv"
    monkeypatch.setenv("TRAINBUS_RUN_ID", first.run_id)
    assert Orchestrator(output_dir=tmp_path, report_to="none").run_id == first.run_id
