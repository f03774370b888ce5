"""A callback's exception names the callback and hook in one line, and keeps its own type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.trainer import TrainerCallback
from trainbus.trainer._handler import callback_failure


class Exploding(TrainerCallback):
    """Raises ``ValueError`` at the end of update 2."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            raise ValueError("patience must be positive")


class AsyncExploding(TrainerCallback):
    """An ``async def`` hook that raises ``KeyError`` on the bus's loop at the first log."""

    async def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        raise KeyError("eval_accuracy")


class Evaluating(TrainerCallback):
    """Calls ``evaluate()`` from a hook, whose own ``on_evaluate`` dispatch then fails."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.evaluate()


class FailingEvaluate(TrainerCallback):
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        raise RuntimeError("metric server down")


def test_a_plain_hook_is_named_and_its_exception_type_kept(tmp_path: Path) -> None:
    """ValueError from Exploding.on_step_end stays a ValueError, noted and logged in one line."""
    run = make_run(tmp_path, max_steps=4, callbacks=[Exploding()])
    with capture_logs() as logs, pytest.raises(ValueError, match="patience") as info:
        run.trainer.train()
    line = "Exploding.on_step_end raised ValueError: patience must be positive"
    assert callback_failure(info.value) == line
    assert info.value.__notes__ == ["raised in the callback hook Exploding.on_step_end"]
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert errors == [
        {
            "event": "callback_failed",
            "hook": "Exploding.on_step_end",
            "error": "ValueError: patience must be positive",
            "log_level": "error",
        }
    ]
    debug = [entry for entry in logs if entry["event"] == "callback_failed_traceback"]
    assert len(debug) == 1 and debug[0]["log_level"] == "debug"
    assert debug[0]["exc_info"] is info.value


def test_an_async_hook_is_named_too(tmp_path: Path) -> None:
    """An ``async def`` hook awaited on the bus's loop is named like a plain one."""
    run = make_run(tmp_path, max_steps=2, callbacks=[AsyncExploding()])
    with pytest.raises(KeyError) as info:
        run.trainer.train()
    assert callback_failure(info.value) == "AsyncExploding.on_log raised KeyError: 'eval_accuracy'"


def test_the_innermost_dispatch_names_the_hook_once(tmp_path: Path) -> None:
    """A hook calling evaluate() whose on_evaluate fails names FailingEvaluate, once."""
    evaluating = Evaluating()
    run = make_run(tmp_path, max_steps=2, callbacks=[evaluating, FailingEvaluate()])
    evaluating.trainer = run.trainer
    with pytest.raises(RuntimeError) as info:
        run.trainer.train()
    assert info.value.__notes__ == ["raised in the callback hook FailingEvaluate.on_evaluate"]


def test_an_exception_outside_callbacks_gets_no_note() -> None:
    """callback_failure() is None for an exception no hook raised."""
    assert callback_failure(ValueError("plain")) is None


RUN_FILE = """
model = "trainbus.trainer.testing:TinyRegressor"
train_dataset = "trainbus.trainer.testing:RegressionDataset"
callbacks = ["tests.trainer.test_callback_errors:Exploding"]

[args]
output_dir = "{output_dir}"
max_steps = 4
per_device_train_batch_size = 8
report_to = "none"
disable_tqdm = true
"""


def test_the_cli_prints_one_line_naming_the_callback(tmp_path: Path) -> None:
    """``trainbus train`` with a failing callback prints one stderr line and exits 1."""
    config = tmp_path / "run.toml"
    config.write_text(RUN_FILE.format(output_dir=tmp_path / "out"))
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "trainbus", "--log-level", "CRITICAL", "train", str(config)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "trainbus train: error: Exploding.on_step_end raised ValueError: patience must be positive"
    ]
