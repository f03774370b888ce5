"""The ``Orchestrator``: run directory, sinks, live events and the run record, without torch."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Evaluate, Log, RunFinished, RunStarted, StepEnd
from trainbus.bus._journal import JournalReader
from trainbus.bus._stream import Subscription
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import RunDir, find_run_dir


def fake_training(steps: int, status: str = "completed") -> object:
    """A torch-free stand-in for a Trainer's work: publishes a scripted run from its thread."""

    def work(bus: Bus) -> int:
        bus.emit(RunStarted, run_name="fake", config={"metric_for_best_model": "eval_accuracy"})
        for step in range(1, steps + 1):
            bus.emit(StepEnd, global_step=step)
            bus.emit(Log, global_step=step, logs={"loss": 1.0 / step})
            if step % 2 == 0:
                bus.emit(Evaluate, global_step=step, metrics={"eval_accuracy": step / steps})
        bus.emit(RunFinished, global_step=steps, status=status)
        return steps

    return work


async def test_a_run_writes_its_directory_journal_and_record(tmp_path: Path) -> None:
    """A run creates trainbus/<run_id>/ with run.json, the journal and the sinks' cursors."""
    sink = RecordingSink("rec")
    with anyio.fail_after(30):
        async with Orchestrator(output_dir=tmp_path, report_to="none", sinks=[sink]) as orch:
            assert await orch.run_in_thread(fake_training(6)) == 6  # type: ignore[arg-type]
    run_dir = find_run_dir(tmp_path)
    assert run_dir.path == tmp_path / "trainbus" / orch.run_id
    record = run_dir.read_record()
    assert record.status == "completed"
    assert [s.name for s in record.sinks] == ["rec"]
    assert record.sinks[0].factory == "trainbus.bus.testing:RecordingSink"
    events = list(JournalReader(run_dir.journal_path).read_from(0))
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.seq for e in sink.received] == [e.seq for e in events]
    assert (run_dir.cursor_dir / "rec.cursor").read_text().strip() == str(events[-1].seq)


async def test_the_record_keeps_the_status_the_trainer_reported(tmp_path: Path) -> None:
    """A run whose RunFinished says 'stopped' (early stopping) is recorded as stopped."""
    with anyio.fail_after(30):
        async with Orchestrator(output_dir=tmp_path, report_to="none") as orch:
            await orch.run_in_thread(fake_training(2, status="stopped"))  # type: ignore[arg-type]
    assert RunDir(orch.run_dir.path).read_record().status == "stopped"


async def test_a_failing_run_is_recorded_as_failed(tmp_path: Path) -> None:
    """An exception from the training work marks the run failed, with the error, and propagates."""

    def broken(bus: Bus) -> None:
        raise RuntimeError("boom")

    with anyio.fail_after(30), pytest.raises(RuntimeError, match="boom"):
        async with Orchestrator(output_dir=tmp_path, report_to="none") as orch:
            await orch.run_in_thread(broken)
    record = orch.run_dir.read_record()
    assert record.status == "failed"
    assert record.error == "RuntimeError: boom"


async def test_events_lets_an_application_watch_live(tmp_path: Path) -> None:
    """``orch.events(Log)`` yields the run's Log events, in order, and ends when the run closes."""
    seen: list[int] = []

    async def watch(events: Subscription) -> None:
        async with events:
            async for event in events:
                assert isinstance(event, Log)
                seen.append(event.global_step)

    with anyio.fail_after(30):
        async with (
            anyio.create_task_group() as tg,
            Orchestrator(output_dir=tmp_path, report_to="none") as orch,
        ):
            tg.start_soon(watch, orch.events(Log))
            await orch.run_in_thread(fake_training(5))  # type: ignore[arg-type]
    assert seen == [1, 2, 3, 4, 5]


async def test_bad_report_to_creates_nothing(tmp_path: Path) -> None:
    """An unknown report_to name fails in ``__aenter__`` before any file is written."""
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError, match="unknown integration 'nope'"):
        async with Orchestrator(output_dir=out, report_to=["nope"]):
            pass
    assert not out.exists()


async def test_duplicate_sink_names_are_rejected(tmp_path: Path) -> None:
    """Two sinks with one name would share a cursor file, so the run refuses to start."""
    with pytest.raises(ConfigurationError, match="share the name 'same'"):
        async with Orchestrator(
            output_dir=tmp_path / "o",
            report_to="none",
            sinks=[RecordingSink("same"), RecordingSink("same")],
        ):
            pass
    assert not (tmp_path / "o").exists()


def test_remote_sinks_are_skipped_on_other_ranks(tmp_path: Path) -> None:
    """On world rank 1 a rank-zero-only sink is not started, a per-rank one is."""
    remote = RecordingSink("remote")
    local = RecordingSink("local", world_rank_zero_only=False)
    orch = Orchestrator(
        output_dir=tmp_path, report_to="none", sinks=[remote, local], rank=1, world_size=2
    )
    sinks, record = orch._prepare()
    assert [s.sink_name for s in sinks] == ["local"]
    assert orch.run_dir.path.name.endswith("-rank1")
    assert [s.name for s in record.sinks] == ["local"]


async def test_sync_refuses_a_run_whose_process_is_alive(tmp_path: Path) -> None:
    """While the process that opened a run lives, ``sync`` would race its sinks and refuses."""
    from trainbus.orchestrator.sync import sync_run

    with anyio.fail_after(30):
        async with Orchestrator(output_dir=tmp_path, report_to="none") as orch:
            with pytest.raises(ConfigurationError, match="still open by process"):
                await sync_run(orch.run_dir.path)


async def test_a_sink_still_behind_at_close_is_reported_and_synced_later(tmp_path: Path) -> None:
    """A stuck sink gets its flush deadline, the backlog is logged with the sync hint, and
    ``sync_run`` delivers exactly the rest afterwards."""
    from structlog.testing import capture_logs

    from trainbus.orchestrator.sync import sync_run

    stuck = RecordingSink("rec", max_batch_size=4)
    with anyio.fail_after(30), capture_logs() as logs:
        async with Orchestrator(
            output_dir=tmp_path, report_to="none", sinks=[stuck], flush_timeout=0.2
        ) as orch:
            stuck.block()
            await orch.run_in_thread(fake_training(20))  # type: ignore[arg-type]
    warning = next(e for e in logs if e["event"] == "run_closed_with_undelivered_events")
    assert warning["hint"] == f"trainbus sync {orch.run_dir.path}"
    assert stuck.received == []

    later = RecordingSink("rec")
    with anyio.fail_after(30):
        reports = await sync_run(orch.run_dir.path, sinks=[later])
    journal = list(JournalReader(orch.run_dir.journal_path).read_from(0))
    assert [e.seq for e in later.received] == [e.seq for e in journal]
    assert reports["rec"].undelivered == 0


def test_a_run_id_that_is_not_a_plain_name_is_rejected(tmp_path: Path) -> None:
    """A run id names a directory, so one with a path separator is refused before anything runs."""
    for bad in ("../escape", "..", "a/b"):
        with pytest.raises(ConfigurationError, match="run_id must be"):
            Orchestrator(output_dir=tmp_path, run_id=bad)
