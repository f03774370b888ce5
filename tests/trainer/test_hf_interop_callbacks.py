"""An unmodified ``transformers.TrainerCallback`` runs in our Trainer and sees what HF shows it.

The same callback class is run in ``transformers.Trainer`` and in ours, with the same model, data
and arguments; the event names, steps, epochs and control flags it records must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from tests.trainer.recording import time_limit  # noqa: E402, F401  (autouse fixture)
from trainbus.trainer import Trainer, TrainingArguments  # noqa: E402  (after the importorskip guard)
from trainbus.trainer._launcher import LocalLauncher  # noqa: E402
from trainbus.trainer.testing import RegressionDataset, TinyRegressor  # noqa: E402

HOOKS = (
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_evaluate",
    "on_save",
    "on_log",
    "on_prediction_step",
)


class HFRecorder(transformers.TrainerCallback):  # type: ignore[misc]  # untyped third-party base
    """A plain Hugging Face callback: records each hook with the step, epoch and flags it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []


def _hook(name: str) -> Any:
    def hook(self: HFRecorder, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        flags = (
            control.should_training_stop,
            control.should_epoch_stop,
            control.should_save,
            control.should_evaluate,
            control.should_log,
        )
        keys = list(kwargs.get("logs") or kwargs.get("metrics") or {})
        self.seen.append((name, state.global_step, round(float(state.epoch or 0), 6), flags, keys))

    return hook


for _name in HOOKS:
    setattr(HFRecorder, _name, _hook(_name))

ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_steps": 5,
    "logging_steps": 2,
    "logging_first_step": True,
    "eval_strategy": "steps",
    "eval_steps": 3,
    "save_strategy": "steps",
    "save_steps": 4,
    "learning_rate": 0.01,
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
    "seed": 3,
}


CONFIGS: dict[str, dict[str, Any]] = {
    "steps-ga2": {},
    "epochs": {
        "gradient_accumulation_steps": 1,
        "max_steps": -1,
        "num_train_epochs": 2,
        "logging_strategy": "epoch",
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_first_step": False,
    },
    "ratios-and-delay": {
        "gradient_accumulation_steps": 1,
        "max_steps": 10,
        "logging_steps": 0.2,
        "eval_steps": 0.3,
        "eval_delay": 4,
        "save_strategy": "no",
    },
    "best-model-limit-1": {
        "max_steps": 6,
        "eval_steps": 2,
        "save_steps": 2,
        "save_total_limit": 1,
        "load_best_model_at_end": True,
    },
    "eval-on-start": {"eval_on_start": True, "max_steps": 3, "save_strategy": "no"},
    "compute-metrics": {"max_steps": 3, "save_strategy": "no"},
}


def _metrics(_: Any) -> dict[str, float]:
    """One key HF must prefix and one it must leave alone: their order in the logs is visible."""
    return {"score": 1.0, "eval_extra": 2.0}


def _compute_metrics(config: dict[str, Any]) -> Any:
    return _metrics if config is CONFIGS["compute-metrics"] else None


def _run_hf(tmp_path: Path, config: dict[str, Any]) -> list[tuple[Any, ...]]:
    recorder = HFRecorder()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), **{**ARGS, **config})
    trainer = transformers.Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=RegressionDataset(20),
        eval_dataset=RegressionDataset(8, seed=1),
        compute_metrics=_compute_metrics(config),
        callbacks=[recorder],
    )
    trainer.train()
    return recorder.seen


def _run_ours(tmp_path: Path, config: dict[str, Any]) -> list[tuple[Any, ...]]:
    recorder = HFRecorder()
    args = TrainingArguments(output_dir=str(tmp_path / "ours"), **{**ARGS, **config})
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(20),
        eval_dataset=RegressionDataset(8, seed=1),
        compute_metrics=_compute_metrics(config),
        callbacks=[recorder],
        launcher=LocalLauncher(),
    )
    trainer.train()
    return recorder.seen


def _without_speed_keys(seen: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Both trainers log the same keys; only memory/throughput extras may differ by version."""
    return [(*entry[:4], [k for k in entry[4] if not k.endswith("_per_second")]) for entry in seen]


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_hf_callback_sees_the_same_events_steps_and_flags(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    """Same hooks, same order, same ``global_step``/``epoch``, flags and log keys (in their order)
    as in transformers."""
    theirs = _without_speed_keys(_run_hf(tmp_path, config))
    ours = _without_speed_keys(_run_ours(tmp_path, config))
    assert [entry[0] for entry in ours] == [entry[0] for entry in theirs]
    assert ours == theirs


def test_hf_callback_can_stop_training(tmp_path: Path) -> None:
    """An HF callback setting ``should_training_stop`` stops our loop at that step."""

    class Stop(transformers.TrainerCallback):  # type: ignore[misc]  # untyped third-party base
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 2:
                control.should_training_stop = True
            return control

    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "eval_strategy": "no"})
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(20),
        callbacks=[Stop()],
        launcher=LocalLauncher(),
    )
    assert trainer.train().global_step == 2


def test_hf_early_stopping_runs_and_is_checkpointed(tmp_path: Path) -> None:
    """transformers' own ``EarlyStoppingCallback`` stops our loop and its state is saved."""
    scores = {1: 1.0, 2: 2.0, 3: 1.5, 4: 1.0, 5: 0.5}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        **{
            **ARGS,
            "gradient_accumulation_steps": 1,
            "max_steps": 5,
            "eval_steps": 1,
            "save_steps": 1,
            "metric_for_best_model": "score",
            "greater_is_better": True,
            "load_best_model_at_end": True,
        },
    )
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(20),
        eval_dataset=RegressionDataset(8, seed=1),
        callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=2)],
        launcher=LocalLauncher(),
    )
    trainer.compute_metrics = lambda _: {"score": scores[trainer.state.global_step]}
    assert trainer.train().global_step == 4
    stored = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    counter = stored["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]
    assert counter == {"early_stopping_patience_counter": 2}
