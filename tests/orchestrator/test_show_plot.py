"""``show`` and ``plot`` read a run directory: journal, cursors and run.json."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.orchestrator.test_run import fake_training
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
