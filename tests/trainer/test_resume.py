"""Resuming from a checkpoint continues the same curve, callback states included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from structlog.testing import capture_logs

from tests.trainer.recording import Run, StopAt, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._events import RunFinished
from trainbus.trainer import EarlyStoppingCallback, EvalPrediction

RESUME_ARGS: dict[str, Any] = {
    "max_steps": 8,
    "gradient_accumulation_steps": 2,
    "save_strategy": "steps",
    "save_steps": 4,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "seed": 7,
}


def _train_logs(run: Run) -> list[dict[str, Any]]:
    return [entry for entry in run.trainer.state.log_history if "loss" in entry]


def _eval_logs(run: Run) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k}
        for entry in run.trainer.state.log_history
        if "eval_loss" in entry
    ]


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    """4 steps, stop, resume to 8 gives the same losses, weights and state as 8 straight steps."""
    torch.manual_seed(0)
    straight = make_run(tmp_path / "a", train_size=24, **RESUME_ARGS)
    straight.trainer.train()

    torch.manual_seed(0)
    first = make_run(tmp_path / "b", train_size=24, callbacks=[StopAt(4)], **RESUME_ARGS)
    first.trainer.train()
    assert first.trainer.state.global_step == 4
    assert (tmp_path / "b" / "out" / "checkpoint-4" / "rng_state.pth").is_file()

    torch.manual_seed(1234)  # a different initialisation: the checkpoint must override it
    second = make_run(tmp_path / "b", train_size=24, **RESUME_ARGS)
    output = second.trainer.train(resume_from_checkpoint=True)

    assert output.global_step == 8
    assert _train_logs(second) == _train_logs(straight)
    assert _eval_logs(second) == _eval_logs(straight)
    for name, value in straight.trainer.model.state_dict().items():
        assert torch.equal(second.trainer.model.state_dict()[name], value), name
    for key in ("global_step", "epoch", "max_steps", "num_train_epochs", "best_metric"):
        assert getattr(second.trainer.state, key) == getattr(straight.trainer.state, key), key
    assert isinstance(second.bus_events()[-1], RunFinished)
    assert second.bus_events()[-1].status == "completed"


def test_resume_skips_only_the_updates_already_done_in_the_epoch(tmp_path: Path) -> None:
    """A checkpoint mid-epoch resumes in that epoch: the step events start right after it."""
    first = make_run(tmp_path, train_size=24, callbacks=[StopAt(4)], **RESUME_ARGS)
    first.trainer.train()
    second = make_run(tmp_path, train_size=24, **RESUME_ARGS)
    second.trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    step_ends = [s.global_step for s in second.callback.seen if s.event == "step_end"]
    assert step_ends == [5, 6, 7, 8]
    epochs = [s.epoch for s in second.callback.seen if s.event == "epoch_begin"]
    assert epochs == [4 / 3, 2.0]  # epoch 1 resumed one update in, then epoch 2


def _scripted(run: Run, by_step: dict[int, float]) -> None:
    """Make the run's evaluations report ``score = by_step[global_step]``."""
    trainer = run.trainer

    def compute_metrics(_: EvalPrediction) -> dict[str, float]:
        return {"score": by_step[trainer.state.global_step]}

    trainer.compute_metrics = compute_metrics


SCORES = {1: 1.0, 2: 2.0, 3: 2.0, 4: 1.5, 5: 1.0, 6: 0.5, 7: 0.1, 8: 0.0}
EARLY_ARGS: dict[str, Any] = {
    "max_steps": 8,
    "eval_strategy": "steps",
    "eval_steps": 1,
    "save_strategy": "steps",
    "save_steps": 1,
    "metric_for_best_model": "score",
    "greater_is_better": True,
    "load_best_model_at_end": True,
    "logging_steps": 8,
}


def test_early_stopping_stops_at_the_second_evaluation_without_improvement(
    tmp_path: Path,
) -> None:
    """Patience 2: steps 3 and 4 do not beat the best (2.0), so training stops at step 4."""
    run = make_run(tmp_path, train_size=40, callbacks=[EarlyStoppingCallback(2)], **EARLY_ARGS)
    _scripted(run, SCORES)
    run.trainer.train()
    assert run.trainer.state.global_step == 4
    assert run.trainer.state.best_metric == 2.0
    assert run.trainer.state.best_global_step == 2
    finished = run.bus_events()[-1]
    assert isinstance(finished, RunFinished) and finished.status == "stopped"


def _early_stopper(run: Run) -> EarlyStoppingCallback:
    found = [
        cb for cb in run.trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)
    ]
    assert len(found) == 1
    return found[0]


def test_early_stopping_counter_survives_a_resume_when_restoring_states(tmp_path: Path) -> None:
    """Stopped at step 3 (counter 1), resumed with restoring on: one more miss stops at 4."""
    first = make_run(
        tmp_path, train_size=40, callbacks=[EarlyStoppingCallback(2), StopAt(3)], **EARLY_ARGS
    )
    _scripted(first, SCORES)
    first.trainer.train()
    assert _early_stopper(first).early_stopping_patience_counter == 1

    second = make_run(
        tmp_path,
        train_size=40,
        callbacks=[EarlyStoppingCallback(2)],
        restore_callback_states_from_checkpoint=True,
        **EARLY_ARGS,
    )
    _scripted(second, SCORES)
    second.trainer.train(resume_from_checkpoint=True)
    assert _early_stopper(second).early_stopping_patience_counter == 2
    assert second.trainer.state.global_step == 4


def test_early_stopping_counter_restarts_without_restoring_states(tmp_path: Path) -> None:
    """Without restoring, the resumed callback starts from zero and needs two more misses."""
    first = make_run(
        tmp_path, train_size=40, callbacks=[EarlyStoppingCallback(2), StopAt(3)], **EARLY_ARGS
    )
    _scripted(first, SCORES)
    first.trainer.train()
    second = make_run(tmp_path, train_size=40, callbacks=[EarlyStoppingCallback(2)], **EARLY_ARGS)
    _scripted(second, SCORES)
    second.trainer.train(resume_from_checkpoint=True)
    assert second.trainer.state.global_step == 5


def test_resume_warns_that_the_checkpoints_intervals_win(tmp_path: Path) -> None:
    """As in HF, a resumed run keeps the checkpoint's logging/eval/save intervals, and says so
    when the arguments ask for others (here logging_steps 4 -> 1)."""
    args = {**RESUME_ARGS, "logging_steps": 4}
    first = make_run(tmp_path, train_size=24, callbacks=[StopAt(4)], **args)
    first.trainer.train()
    second = make_run(tmp_path, train_size=24, **{**args, "logging_steps": 1})
    with capture_logs() as logs:
        second.trainer.train(resume_from_checkpoint=True)
    warned = [entry for entry in logs if entry["event"] == "resumed_state_overrides_arguments"]
    assert len(warned) == 1
    assert warned[0]["differences"] == {"logging_steps": {"arguments": 1, "checkpoint": 4}}
    assert second.trainer.state.logging_steps == 4
    assert [e["step"] for e in second.trainer.state.log_history if "loss" in e] == [4, 8]


def test_early_stopping_counts_nan_evaluations_from_the_start(tmp_path: Path) -> None:
    """A run whose metric is NaN from the first evaluation stops as transformers' does (step 3
    with patience 2): the best metric starts at -inf after the first evaluation (greater is
    better) and NaN never beats it, so the evaluations at steps 2 and 3 count as misses."""
    nan_scores = dict.fromkeys(range(1, 9), float("nan"))
    run = make_run(tmp_path, train_size=40, callbacks=[EarlyStoppingCallback(2)], **EARLY_ARGS)
    _scripted(run, nan_scores)
    run.trainer.train()
    assert run.trainer.state.global_step == 3
    assert run.trainer.state.best_metric == float("-inf")
    assert run.trainer.state.best_global_step is None
