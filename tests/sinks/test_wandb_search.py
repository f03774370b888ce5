"""W&B and a hyper-parameter search: each trial's run is named after the trial and grouped under
the search's name, as Hugging Face's callback groups a named trial's run."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from tests.sinks.scripted import deliver_through_bus, scripted_run
from tests.sinks.test_wandb import OfflineRun, offline  # noqa: F401  # the fixture
from trainbus.bus._events import RunStarted, TrialInfo
from trainbus.sinks.wandb import WandbSink

pytest.importorskip("wandb")


async def test_trials_are_named_runs_of_the_search_group(
    offline: dict[str, str],  # noqa: F811  # the fixture imported above
    tmp_path: Path,
) -> None:
    """Two trials' runs in offline mode: two W&B runs, display names ``trial-0``/``trial-1``,
    both in the group named after the search."""
    for number in (0, 1):
        events = scripted_run(4, run_id=f"bus-run-{number}", eval_every=2)
        started = events[0]
        assert isinstance(started, RunStarted)
        trial = TrialInfo(
            search="digits-search", search_id="s1", number=number, name=f"trial-{number}"
        )
        events[0] = msgspec.structs.replace(started, trial=trial)
        run_dir = tmp_path / f"trial-{number}" / "trainbus" / "run"
        sink = WandbSink.from_env(offline, run_dir=run_dir, run_name="fallback-name")
        with anyio.fail_after(120):
            report = await deliver_through_bus(events, [sink], run_dir)
        assert report["wandb"].undelivered == 0
        [info] = OfflineRun(run_dir).runs
        assert (info.display_name, info.run_group) == (f"trial-{number}", "digits-search")
