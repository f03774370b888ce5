"""train() refuses zero-length runs and incomplete or corrupt checkpoints before its run opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.recording import Run, StopAt, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus import ConfigurationError, StateFileError

ARGS: dict[str, Any] = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "seed": 3}


def _checkpointed(tmp_path: Path, **overrides: Any) -> Path:
    """A run stopped at step 2 with its checkpoint on disk; returns the checkpoint."""
    run = make_run(tmp_path, callbacks=[StopAt(2)], **{**ARGS, **overrides})
    run.trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert checkpoint.is_dir()
    return checkpoint


def _assert_nothing_published(run: Run) -> None:
    assert not run.sink.opened and run.sink.received == []


@pytest.mark.parametrize("overrides", [{"num_train_epochs": 0}, {"num_train_epochs": 0.0}])
def test_zero_epochs_are_refused_before_the_run_opens(
    tmp_path: Path, overrides: dict[str, Any]
) -> None:
    """num_train_epochs=0 without max_steps is one error, not a run that "completes" 0 steps."""
    run = make_run(tmp_path, **overrides)
    with pytest.raises(ConfigurationError, match=r"^num_train_epochs=0 with max_steps=-1 trains"):
        run.trainer.train()
    _assert_nothing_published(run)


def test_zero_epochs_still_evaluate(tmp_path: Path) -> None:
    """Arguments with num_train_epochs=0 stay valid for evaluate(), as in Hugging Face."""
    run = make_run(tmp_path, num_train_epochs=0)
    assert "eval_loss" in run.trainer.evaluate()


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_without_a_checkpoint_part_names_the_file(tmp_path: Path, missing: str) -> None:
    """A checkpoint missing its optimizer, scheduler or RNG file is refused, naming the file."""
    checkpoint = _checkpointed(tmp_path)
    (checkpoint / missing).unlink()
    run = make_run(tmp_path, **ARGS)
    with pytest.raises(ConfigurationError, match=rf"has no {missing}, .*resume_only_model=True"):
        run.trainer.train(resume_from_checkpoint=True)
    _assert_nothing_published(run)


def test_save_only_model_checkpoint_needs_resume_only_model(tmp_path: Path) -> None:
    """A save_only_model checkpoint names both missing files; resume_only_model accepts it."""
    checkpoint = _checkpointed(tmp_path, save_only_model=True)
    refused = make_run(tmp_path, **ARGS)
    with pytest.raises(ConfigurationError, match=r"has no optimizer\.pt or scheduler\.pt"):
        refused.trainer.train(resume_from_checkpoint=str(checkpoint))

    torch.manual_seed(99)  # a different initialisation: the checkpoint's weights must win
    resumed = make_run(tmp_path, resume_only_model=True, **ARGS)
    output = resumed.trainer.train(resume_from_checkpoint=str(checkpoint))
    assert output.global_step == 4  # continued from step 2, not from 0
    steps = [entry["step"] for entry in resumed.trainer.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3, 4]  # the checkpoint's history, then this run's steps


def test_resume_only_model_skips_parts_that_are_present(tmp_path: Path) -> None:
    """resume_only_model starts optimizer and schedule afresh even when their files exist."""
    checkpoint = _checkpointed(tmp_path)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).write_bytes(b"not a torch file")  # would fail if it were read
    resumed = make_run(tmp_path, resume_only_model=True, **ARGS)
    assert resumed.trainer.train(resume_from_checkpoint=True).global_step == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"global_step": 2, "epoch": 0.5, "log_hi',
            r"is not valid JSON \(truncated or corrupt\?\)",
        ),
        ("[1, 2]", r"must hold a JSON object, got list"),
        ('{"global_step": "2"}', r"global_step must be an integer >= 0, got '2'"),
        ("\udcff", r"is not valid JSON"),
    ],
)
def test_corrupt_trainer_state_is_one_line_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    """A truncated or corrupt trainer_state.json is one StateFileError naming the file."""
    checkpoint = _checkpointed(tmp_path)
    state = checkpoint / "trainer_state.json"
    state.write_bytes(content.encode("utf-8", "surrogateescape"))
    run = make_run(tmp_path, **ARGS)
    with pytest.raises(StateFileError, match=message) as info:
        run.trainer.train(resume_from_checkpoint=True)
    text = str(info.value)
    assert str(state) in text and "\n" not in text
    assert isinstance(info.value, ConfigurationError)  # the CLI's exit code 2
    _assert_nothing_published(run)
