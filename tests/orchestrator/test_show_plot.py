"""``show`` and ``plot`` read a run directory: journal, cursors and run.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from tests.orchestrator.test_run import fake_training
from trainbus.bus import Event, Log, PermanentSinkError, replay
from trainbus.bus._errors import ConfigurationError
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.plot import collect_curves, plot_run
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.rundir import RunDir, find_run_dir
from trainbus.orchestrator.show import format_summary, summarize


async def make_run(output_dir: Path, steps: int = 6) -> RunDir:
    """A finished fake run with one recording sink."""
    with anyio.fail_after(30):
        async with Orchestrator(
            output_dir=output_dir, report_to="none", sinks=[RecordingSink("rec")]
        ) as orch:
            await orch.run_in_thread(fake_training(steps))  # type: ignore[arg-type]
    return orch.run_dir


async def test_show_reports_steps_metrics_and_sinks(tmp_path: Path) -> None:
    """The summary has the last step, the last and best metrics and each sink's delivery state."""
    run_dir = await make_run(tmp_path, steps=6)
    summary = summarize(run_dir)
    assert summary.global_step == 6
    assert summary.status == "completed"
    assert summary.last_train["loss"] == pytest.approx(1 / 6)
    assert summary.best["eval_accuracy"] == {"value": 1.0, "step": 6}
    assert [(s.name, s.behind) for s in summary.sinks] == [("rec", 0)]
    text = format_summary(summary, run_dir)
    assert "eval_accuracy=1@6" in text
    assert "up to date" in text


async def test_show_counts_what_a_sink_still_owes(tmp_path: Path) -> None:
    """A cursor behind the journal's end shows as events behind, with the sync hint."""
    run_dir = await make_run(tmp_path)
    (run_dir.cursor_dir / "rec.cursor").write_text("3\n")
    summary = summarize(run_dir)
    assert summary.sinks[0].behind == summary.last_seq - 3
    assert "trainbus sync" in format_summary(summary, run_dir)


class _RefusesStepThree(RecordingSink):
    """Answers like a server refusing, for good, any batch holding step 3's loss."""

    async def write(self, batch: Sequence[Event]) -> None:
        if any(isinstance(e, Log) and e.global_step == 3 for e in batch):
            raise PermanentSinkError("HTTP 400: invalid metric", status=400)
        await super().write(batch)


async def test_show_names_quarantined_points_as_the_closing_report_does(tmp_path: Path) -> None:
    """A point the sink refuses is quarantined: the closing report and ``show`` both count and
    name it, every other event is delivered, and a later sync neither resends nor recounts it."""
    sink = _RefusesStepThree("rec")
    with anyio.fail_after(30), capture_logs() as logs:
        async with Orchestrator(output_dir=tmp_path, report_to="none", sinks=[sink]) as orch:
            await orch.run_in_thread(fake_training(6))  # type: ignore[arg-type]
    closing = [e for e in logs if e["event"] == "sink_closed_with_quarantined_points"]
    assert len(closing) == 1 and closing[0]["quarantined"] == 1
    summary = summarize(orch.run_dir)
    (state,) = summary.sinks
    delivered_logs = [e for e in sink.received if isinstance(e, Log)]
    assert len(delivered_logs) == 5 and state.behind == 0 and state.quarantined == 1
    (point,) = state.quarantined_points
    assert closing[0]["named"] == [f"{point.seq}:loss"] and point.key == "loss"
    assert point.seq not in {e.seq for e in sink.received}
    assert len(sink.received) == summary.events - 1
    text = format_summary(summary, orch.run_dir)
    assert "1 point quarantined" in text and f"seq {point.seq} 'loss': refused" in text
    await replay(orch.run_dir.journal_path, [sink], cursor_dir=orch.run_dir.cursor_dir)
    assert summarize(orch.run_dir).sinks[0].quarantined == 1


async def test_plot_writes_a_png(tmp_path: Path) -> None:
    """``plot_run`` draws the loss and eval curves into a non-empty PNG."""
    run_dir = await make_run(tmp_path)
    out = plot_run(run_dir, tmp_path / "curves.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


async def test_curves_split_losses_from_other_metrics(tmp_path: Path) -> None:
    """Train loss goes to the loss panel, eval accuracy to the metrics panel."""
    from trainbus.bus._journal import JournalReader

    run_dir = await make_run(tmp_path, steps=4)
    losses, metrics = collect_curves(JournalReader(run_dir.journal_path).read_from(0))
    assert [step for step, _ in losses["train loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in metrics["eval accuracy"]] == [2, 4]


def test_a_path_that_is_no_run_is_a_clear_error(tmp_path: Path) -> None:
    """find_run_dir on an empty or missing directory names the problem."""
    with pytest.raises(ConfigurationError, match="neither a trainbus run directory"):
        find_run_dir(tmp_path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        find_run_dir(tmp_path / "missing")


async def test_a_run_left_running_by_a_dead_process_shows_as_killed(tmp_path: Path) -> None:
    """A ``running`` record whose process no longer exists is reported as killed."""
    run_dir = await make_run(tmp_path)
    record = run_dir.read_record()
    record.status = "running"
    record.pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    run_dir.write_record(record)
    assert summarize(run_dir).status == "killed (process gone)"
