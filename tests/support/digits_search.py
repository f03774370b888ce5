"""A small hyper-parameter search on the digits demo, shared by the search tests.

Each trial trains ``STEPS`` optimizer steps of the digits MLP on 256 images and evaluates every
``EVAL_EVERY`` steps, so a trial takes about a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from examples import digits
from trainbus.trainer import TrainerCallback
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._state import TrainerControl, TrainerState
from trainbus.trainer._trainer import Trainer

__all__ = [
    "EVAL_EVERY",
    "STEPS",
    "PruneTrialOne",
    "SeenAtTrainBegin",
    "hp_space",
    "make_trainer",
    "model_init",
]

STEPS = 6
EVAL_EVERY = 3


class SeenAtTrainBegin(TrainerCallback):
    """What a user's callback sees of each trial when its training begins."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.seen.append(
            {
                "search": state.is_hyper_param_search,
                "name": state.trial_name,
                "params": state.trial_params,
                "learning_rate": args.learning_rate,
                "output_dir": args.output_dir,
            }
        )


class PruneTrialOne(optuna.pruners.BasePruner):  # type: ignore[misc]  # optuna is untyped here
    """Prunes trial 1 at its first report and nothing else: pruning, deterministically."""

    def prune(self, study: Any, trial: Any) -> bool:
        return bool(trial.number == 1)


def model_init(trial: Any) -> digits.DigitsMLP:
    """The digits MLP; its width is a hyper-parameter the trial picks."""
    hidden = 32 if trial is None else trial.suggest_categorical("hidden", [16, 32])
    return digits.DigitsMLP(hidden=hidden)


def hp_space(trial: Any) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)}


def make_trainer(
    output_dir: Path,
    *,
    eval_strategy: str = "steps",
    report_to: list[str] | None = None,
    callbacks: list[Any] | None = None,
) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        logging_steps=1,
        eval_strategy=eval_strategy,
        eval_steps=EVAL_EVERY,
        save_strategy="no",
        report_to=report_to if report_to is not None else ["tensorboard"],
        disable_tqdm=True,
    )
    return Trainer(
        model_init=model_init,
        args=args,
        train_dataset=digits.train_dataset(limit=256),
        eval_dataset=digits.eval_dataset(limit=64),
        compute_metrics=digits.accuracy,
        callbacks=callbacks,
    )
