"""SIGTERM and SIGINT during ``train()``: finish the step, save, close the run as killed."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.trainer.recording import Run, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._events import RunFinished, Save
from trainbus.trainer import TrainerCallback
from trainbus.trainer import _checkpoint as ckpt


class SignalAt(TrainerCallback):
    """Sends ``signum`` to this process at the end of one update (or when it saves)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, *, hook: str = "step_end") -> None:
        self.step, self.signum, self.hook = step, signum, hook
        self.handler_seen: Any = None

    def _maybe_signal(self, hook: str, state: Any) -> None:
        self.handler_seen = signal.getsignal(self.signum)
        if hook == self.hook and state.global_step == self.step:
            signal.raise_signal(self.signum)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_signal("step_end", state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_signal("save", state)


def _finished(run: Run) -> RunFinished:
    last = run.bus_events()[-1]
    assert isinstance(last, RunFinished)
    return last


def _saves(run: Run) -> list[int]:
    return [e.global_step for e in run.bus_events() if isinstance(e, Save)]


def test_sigterm_finishes_the_step_saves_and_closes_the_run_killed(tmp_path: Path) -> None:
    """SIGTERM at step 3 of 20: train() returns at step 3 with a checkpoint, status killed."""
    before = signal.getsignal(signal.SIGTERM)
    run = make_run(
        tmp_path, max_steps=20, save_strategy="steps", save_steps=100, callbacks=[SignalAt(3)]
    )
    output = run.trainer.train()
    assert output.global_step == 3
    assert run.trainer.stopped_by_signal == signal.SIGTERM
    assert _saves(run) == [3]
    assert (tmp_path / "out" / "checkpoint-3" / ckpt.OPTIMIZER_NAME).is_file()
    assert _finished(run).status == "killed"
    assert signal.getsignal(signal.SIGTERM) is before  # restored after train()


def test_sigint_stops_the_same_way_and_the_next_train_is_not_marked(tmp_path: Path) -> None:
    """SIGINT stops gracefully too; a later train() without a signal reports no signal."""
    stopper = SignalAt(2, signal.SIGINT)
    run = make_run(tmp_path, max_steps=4, callbacks=[stopper])
    assert run.trainer.train().global_step == 2
    assert run.trainer.stopped_by_signal == signal.SIGINT
    assert _finished(run).status == "killed"
    stopper.step = -1
    assert run.trainer.train().global_step == 4
    assert run.trainer.stopped_by_signal is None
    assert _finished(run).status == "completed"


def test_no_checkpoint_without_save_strategy(tmp_path: Path) -> None:
    """With ``save_strategy="no"`` a stop signal writes no checkpoint."""
    run = make_run(tmp_path, max_steps=20, callbacks=[SignalAt(3)])
    run.trainer.train()
    assert _saves(run) == []
    assert ckpt.sorted_checkpoints(tmp_path / "out") == []


def test_the_final_save_respects_save_only_model_and_rotation(tmp_path: Path) -> None:
    """The stop's checkpoint has no optimizer under ``save_only_model`` and rotates old ones."""
    run = make_run(
        tmp_path,
        max_steps=20,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        save_only_model=True,
        callbacks=[SignalAt(5)],
    )
    run.trainer.train()
    assert _saves(run) == [2, 4, 5]
    names = [path.name for path in ckpt.sorted_checkpoints(tmp_path / "out")]
    assert names == ["checkpoint-4", "checkpoint-5"]
    assert not (tmp_path / "out" / "checkpoint-5" / ckpt.OPTIMIZER_NAME).exists()


def test_a_signal_during_a_save_stops_after_it_without_saving_twice(tmp_path: Path) -> None:
    """SIGTERM from ``on_save`` at step 2: training stops at step 2 with that one checkpoint."""
    run = make_run(
        tmp_path,
        max_steps=20,
        save_strategy="steps",
        save_steps=2,
        callbacks=[SignalAt(2, hook="save")],
    )
    assert run.trainer.train().global_step == 2
    assert _saves(run) == [2]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["checkpoint-2"]


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    """A process that ignores SIGINT (``nohup``) keeps ignoring it while training."""
    stopper = SignalAt(-1, signal.SIGINT)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        make_run(tmp_path, max_steps=2, callbacks=[stopper]).trainer.train()
        assert stopper.handler_seen is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_train_async_leaves_the_signals_to_the_host(tmp_path: Path) -> None:
    """Under ``train_async()`` the host's SIGTERM handler stays in place while training runs."""
    stopper = SignalAt(-1)
    run = make_run(tmp_path, max_steps=2, callbacks=[stopper])
    before = signal.getsignal(signal.SIGTERM)
    anyio.run(run.trainer.train_async)
    assert stopper.handler_seen is before
    assert run.trainer.stopped_by_signal is None


@pytest.mark.parametrize("retired_final_exists", [False, True])
def test_interrupted_saves_are_cleaned_up_or_put_back(
    tmp_path: Path, retired_final_exists: bool
) -> None:
    """Staging dirs go; a retired checkpoint whose replacement never landed comes back."""
    out = tmp_path / "out"
    (out / ".checkpoint-4.tmp-999999").mkdir(parents=True)
    (out / ".checkpoint-4.tmp-999999" / ckpt.WEIGHTS_NAME).write_bytes(b"half")
    retired = out / ".checkpoint-2.old-999999"
    retired.mkdir()
    (retired / ckpt.STATE_NAME).write_text("{}")
    if retired_final_exists:
        (out / "checkpoint-2").mkdir()
    (out / ".keep.tmp-1").mkdir()  # not a checkpoint's: left alone

    removed = ckpt.recover_interrupted_saves(out)

    expected = {".checkpoint-4.tmp-999999"} | ({retired.name} if retired_final_exists else set())
    assert {path.name for path in removed} == expected
    assert sorted(p.name for p in out.iterdir()) == [".keep.tmp-1", "checkpoint-2"]
    assert (out / "checkpoint-2" / ckpt.STATE_NAME).is_file() != retired_final_exists


def test_train_removes_a_killed_save_before_it_starts(tmp_path: Path) -> None:
    """A staging directory left by a killed process is gone once the next train() starts."""
    staging = tmp_path / "out" / ".checkpoint-1.tmp-999999"
    staging.mkdir(parents=True)
    make_run(tmp_path, max_steps=1, save_strategy="steps", save_steps=1).trainer.train()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-1"]
