"""PrinterCallback and ProgressCallback: what they show, on which rank, what they leave alone."""

from __future__ import annotations

import pytest

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._progress import PrinterCallback, ProgressCallback
from trainbus.trainer._state import TrainerControl, TrainerState

ARGS = TrainingArguments(disable_tqdm=False)


def test_printer_prints_without_total_flos_and_removes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The printer shows floats at 4 significant digits and removes total_flos from the logs
    themselves, on every rank, as Hugging Face's does (train()'s metrics then lack it)."""
    logs = {"loss": 0.123456, "total_flos": 1e12, "epoch": 1}
    PrinterCallback().on_log(ARGS, TrainerState(), TrainerControl(), logs=logs)
    assert capsys.readouterr().out == "{'loss': '0.1235', 'epoch': 1}\n"
    assert "total_flos" not in logs
    quiet = {"total_flos": 1e12}
    PrinterCallback().on_log(
        ARGS, TrainerState(is_local_process_zero=False), TrainerControl(), logs=quiet
    )
    assert quiet == {}


def test_printer_is_silent_off_the_local_main_process(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the local main process prints."""
    state = TrainerState(is_local_process_zero=False)
    PrinterCallback().on_log(ARGS, state, TrainerControl(), logs={"loss": 1.0})
    assert capsys.readouterr().out == ""


def test_training_bar_follows_global_step(capsys: pytest.CaptureFixture[str]) -> None:
    """The bar's total is max_steps and it advances by the step difference (jumps on resume)."""
    progress, state = ProgressCallback(), TrainerState(max_steps=20)
    progress.on_train_begin(ARGS, state, TrainerControl())
    for step in (5, 6):
        state.global_step = step
        progress.on_step_end(ARGS, state, TrainerControl())
    bar = progress.training_bar
    assert (bar.total, bar.n) == (20, 6)
    progress.on_train_end(ARGS, state, TrainerControl())
    assert progress.training_bar is None
    assert "6/20" in capsys.readouterr().err


def test_logs_written_above_the_bar_with_long_strings_shortened(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Logs are written only while training; long strings become a notice; total_flos hidden."""
    progress, state = ProgressCallback(max_str_len=10), TrainerState(max_steps=4)
    progress.on_log(ARGS, state, TrainerControl(), logs={"loss": 1.0})
    assert capsys.readouterr().out == ""
    progress.on_train_begin(ARGS, state, TrainerControl())
    logs = {"note": "x" * 30, "loss": 2.0, "total_flos": 5.0}
    progress.on_log(ARGS, state, TrainerControl(), logs=logs)
    out = capsys.readouterr().out
    assert "length: 30 > 10. Consider increasing `max_str_len`" in out
    assert "'loss': '2'" in out and "total_flos" not in out
    assert logs["note"] == "x" * 30
    progress.on_train_end(ARGS, state, TrainerControl())


def test_prediction_bar_counts_batches_and_closes() -> None:
    """The prediction bar is sized from the eval loader and dropped at on_evaluate/on_predict."""
    progress, state = ProgressCallback(), TrainerState()
    for _ in range(3):
        progress.on_prediction_step(ARGS, state, TrainerControl(), eval_dataloader=[0] * 8)
    assert (progress.prediction_bar.total, progress.prediction_bar.n) == (8, 3)
    progress.on_evaluate(ARGS, state, TrainerControl(), metrics={})
    assert progress.prediction_bar is None
    progress.on_prediction_step(ARGS, state, TrainerControl(), eval_dataloader=iter([1]))
    assert progress.prediction_bar is None  # no length, no bar
    progress.on_prediction_step(ARGS, state, TrainerControl(), eval_dataloader=[0])
    progress.on_predict(ARGS, state, TrainerControl(), metrics={})
    assert progress.prediction_bar is None


def test_no_bars_off_the_world_main_process() -> None:
    """Other ranks create no bars but still track the step."""
    progress, state = ProgressCallback(), TrainerState(is_world_process_zero=False, max_steps=3)
    progress.on_train_begin(ARGS, state, TrainerControl())
    progress.on_prediction_step(ARGS, state, TrainerControl(), eval_dataloader=[0])
    assert progress.training_bar is None and progress.prediction_bar is None
    state.global_step = 2
    progress.on_step_end(ARGS, state, TrainerControl())
    progress.on_train_end(ARGS, state, TrainerControl())
