"""TensorBoard and a hyper-parameter search: under ``TENSORBOARD_LOGGING_DIR``, one directory per
trial, named after it (the default directory is per trial already: each trial has its own
``output_dir``, see ``tests/trainer/test_search.py``)."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.sinks.scripted import deliver_through_bus, scripted_run
from trainbus.bus._errors import PermanentSinkError
from trainbus.bus._events import Event, RunStarted, TrialInfo
from trainbus.sinks.tensorboard import TensorBoardSink


def trial_run(number: int, name: str) -> list[Event]:
    """A scripted run whose ``RunStarted`` says it is trial ``number`` of one search."""
    events = scripted_run(6, run_id=f"run-{number}", eval_every=3)
    started = events[0]
    assert isinstance(started, RunStarted)
    trial = TrialInfo(search="search", search_id="s1", number=number, name=name)
    return [msgspec.structs.replace(started, trial=trial), *events[1:]]


async def test_each_trial_writes_its_own_folder_under_the_logging_dir(tmp_path: Path) -> None:
    """Two trials' runs with one ``TENSORBOARD_LOGGING_DIR``: a folder per trial, each holding
    only its own scalars, read back with TensorBoard's reader."""
    logging_dir = tmp_path / "tb"
    for number in (0, 1):
        run_dir = tmp_path / f"run-{number}"
        sink = TensorBoardSink(run_dir=run_dir, logging_dir=logging_dir)
        with anyio.fail_after(30):
            report = await deliver_through_bus(
                trial_run(number, f"trial-{number}"), [sink], run_dir
            )
        assert report["tensorboard"].undelivered == 0
    assert sorted(p.name for p in logging_dir.iterdir()) == ["trial-0", "trial-1"]
    for number in (0, 1):
        accumulator = EventAccumulator(str(logging_dir / f"trial-{number}"))
        accumulator.Reload()
        assert [s.step for s in accumulator.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
        (events_file,) = (logging_dir / f"trial-{number}").iterdir()
        assert events_file.name.startswith("events.out.tfevents")


async def test_a_replay_that_starts_after_run_started_finds_the_trial_folder(
    tmp_path: Path,
) -> None:
    """The trial's folder is remembered with the sink's state, so a later sink of the same run
    (``trainbus sync``) that never sees ``RunStarted`` writes into it, not beside it."""
    logging_dir = tmp_path / "tb"
    events = trial_run(2, "trial-2")
    first = TensorBoardSink(run_dir=tmp_path, logging_dir=logging_dir)
    with anyio.fail_after(10):
        await first.open()
        await first.write(events[:3])
        await first.close()
    later = TensorBoardSink(run_dir=tmp_path, logging_dir=logging_dir)
    with anyio.fail_after(10):
        await later.open()
        await later.write(events[3:])
        await later.close()
    assert [p.name for p in logging_dir.iterdir()] == ["trial-2"]
    accumulator = EventAccumulator(str(logging_dir / "trial-2"))
    accumulator.Reload()
    assert [s.step for s in accumulator.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
async def test_a_trial_name_that_is_not_one_folder_is_refused(tmp_path: Path, name: str) -> None:
    """The trial's name comes from run data: one that would climb out or nest is refused."""
    sink = TensorBoardSink(run_dir=tmp_path, logging_dir=tmp_path / "tb")
    with anyio.fail_after(10):
        await sink.open()
        with pytest.raises(PermanentSinkError, match="trial name"):
            await sink.write(trial_run(0, name)[:2])
        await sink.close()
    assert not (tmp_path / "escape").exists()
