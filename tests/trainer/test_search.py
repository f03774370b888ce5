"""``Trainer.hyperparameter_search``: Optuna trials, each a run of its own, on the digits demo.

Each trial trains a few steps of the digits MLP, so a four-trial search takes seconds; the
journals, the TensorBoard files and the Optuna study are read back to check what each trial was.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples import digits
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Evaluate, Event, RunFinished, RunStarted
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer import BestRun, TrainerCallback
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._search import default_compute_objective
from trainbus.trainer._state import TrainerControl, TrainerState
from trainbus.trainer._trainer import Trainer

optuna = pytest.importorskip("optuna")

from tests.support.digits_search import (  # noqa: E402  # after the skip: it imports optuna
    EVAL_EVERY,
    STEPS,
    PruneTrialOne,
    SeenAtTrainBegin,
    hp_space,
    make_trainer,
    model_init,
)


def journal_of(output_dir: Path) -> list[Event]:
    """The events of the one run directory under ``output_dir``."""
    (run,) = (output_dir / "trainbus").iterdir()
    assert find_run_dir(output_dir).path == run
    return list(JournalReader(find_run_dir(output_dir).journal_path).read_from(0))


def loss_only(metrics: dict[str, Any]) -> float:
    return float(metrics["eval_loss"])


def test_four_trials_are_four_runs_with_their_journals_params_and_pruning(tmp_path: Path) -> None:
    """Four Optuna trials on the digits demo: four runs in four directories, each journal
    naming its trial; the callbacks see the trial in ``TrainerState`` and its arguments; trial 1
    is pruned at its first evaluation and its run ends ``stopped``; the best completed trial is
    returned; TensorBoard has one directory per trial; the trainer's arguments come back."""
    seen = SeenAtTrainBegin()
    trainer = make_trainer(tmp_path, callbacks=[seen])
    base_args = trainer.args
    storage = optuna.storages.InMemoryStorage()

    with capture_logs() as logs:
        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=loss_only,
            n_trials=4,
            direction="minimize",
            hp_name=lambda trial: f"trial-{trial.number}",
            storage=storage,
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=PruneTrialOne(),
            study_name="digits-search",
        )

    study = optuna.load_study(study_name="digits-search", storage=storage)
    states = [trial.state for trial in study.trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.COMPLETE,
    ]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    winner = min(completed, key=lambda t: t.value)
    assert isinstance(best, BestRun)
    assert best.run_id == str(winner.number)
    assert best.objective == winner.value
    assert best.hyperparameters == winner.params
    assert best.run_summary.study_name == "digits-search"
    (reported,) = [e for e in logs if e["event"] == "hyperparameter_search_best_trial"]
    assert (reported["trial"], reported["objective"]) == (winner.number, winner.value)
    assert reported["run_id"] == winner.user_attrs["trainbus_run_id"]
    assert reported["output_dir"] == str(tmp_path / f"trial-{winner.number}")

    run_ids = set()
    search_ids = set()
    for trial in study.trials:
        trial_dir = tmp_path / f"trial-{trial.number}"
        events = journal_of(trial_dir)
        (started,) = [e for e in events if isinstance(e, RunStarted)]
        assert started.trial is not None
        assert (started.trial.number, started.trial.name) == (trial.number, f"trial-{trial.number}")
        assert started.trial.params == trial.params
        assert started.trial.search == str(tmp_path)
        search_ids.add(started.trial.search_id)
        run_ids.add(started.run_id)
        assert trial.user_attrs["trainbus_run_id"] == started.run_id
        (finished,) = [e for e in events if isinstance(e, RunFinished)]
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        assert finished.status == ("stopped" if pruned else "completed")
        assert finished.global_step == (EVAL_EVERY if pruned else STEPS)

        (log_dir,) = (trial_dir / "runs").iterdir()  # one TensorBoard directory per trial
        tb = EventAccumulator(str(log_dir))
        tb.Reload()
        last = EVAL_EVERY if pruned else STEPS
        assert [s.step for s in tb.Scalars("train/loss")] == list(range(1, last + 1))
    assert len(run_ids) == 4 and len(search_ids) == 1
    assert not (tmp_path / "trainbus").exists()  # no run outside the trials' directories

    assert [s["search"] for s in seen.seen] == [True] * 4
    assert [s["name"] for s in seen.seen] == [f"trial-{n}" for n in range(4)]
    assert [s["params"] for s in seen.seen] == [t.params for t in study.trials]
    assert [s["learning_rate"] for s in seen.seen] == [
        t.params["learning_rate"] for t in study.trials
    ]
    assert [s["output_dir"] for s in seen.seen] == [str(tmp_path / f"trial-{n}") for n in range(4)]
    assert trainer.args is base_args and trainer.args.output_dir == str(tmp_path)


def test_without_evaluation_during_training_the_objective_comes_from_evaluate_in_the_run(
    tmp_path: Path,
) -> None:
    """With no evaluation while training, each trial is evaluated after it, in its own run
    (``RunStarted`` continued); a parameter that is not an argument is left to ``model_init``
    with a warning, as transformers does; the trial names default to ``run-<number>``, and
    ``TrainerState.trial_name`` stays unset without ``hp_name``, as in transformers."""
    seen = SeenAtTrainBegin()
    trainer = make_trainer(tmp_path, eval_strategy="no", report_to=[], callbacks=[seen])

    def space(trial: Any) -> dict[str, Any]:
        return {**hp_space(trial), "hidden": trial.suggest_categorical("hidden", [16, 32])}

    with capture_logs() as logs:
        best = trainer.hyperparameter_search(hp_space=space, n_trials=2, direction="maximize")

    assert isinstance(best, BestRun)
    study = best.run_summary
    for trial in study.trials:
        events = journal_of(tmp_path / f"run-{trial.number}")
        started = [e for e in events if isinstance(e, RunStarted)]
        assert [e.continued for e in started] == [False, True]
        assert all(e.trial is not None and e.trial.number == trial.number for e in started)
        (evaluated,) = [e for e in events if isinstance(e, Evaluate)]
        assert trial.value == pytest.approx(default_compute_objective(evaluated.metrics))
    assert best.objective == max(t.value for t in study.trials)
    warned = [entry for entry in logs if entry["event"] == "hyperparameter_not_an_argument"]
    assert [entry["name"] for entry in warned] == ["hidden", "hidden"]
    assert [s["name"] for s in seen.seen] == [None, None]


class SignalAtStep(TrainerCallback):
    """Sends this process SIGTERM at step 2 of trial ``number``, as a scheduler stopping a job."""

    def __init__(self, number: int) -> None:
        self.number = number

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        in_trial = args.output_dir.endswith(f"run-{self.number}")
        if in_trial and state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_signal_ends_the_search_after_the_trial_it_stopped(tmp_path: Path) -> None:
    """SIGTERM in trial 1 stops that trial gracefully (its run ``killed``) and the search with
    it: no third trial, trial 1 pruned, the best trial so far returned, the signal named."""
    trainer = make_trainer(tmp_path, report_to=[], callbacks=[SignalAtStep(1)])

    best = trainer.hyperparameter_search(hp_space=hp_space, n_trials=4)

    study = best.run_summary
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ]
    assert best.run_id == "0"
    assert trainer.stopped_by_signal == signal.SIGTERM
    (finished,) = [e for e in journal_of(tmp_path / "run-1") if isinstance(e, RunFinished)]
    assert (finished.status, finished.global_step) == ("killed", 2)


def test_several_objectives_return_the_best_trials(tmp_path: Path) -> None:
    """A list of directions makes a multi-objective study: a list of ``BestRun`` comes back,
    each with one value per objective, and nothing is pruned."""
    trainer = make_trainer(tmp_path, report_to=[])

    def two(metrics: dict[str, Any]) -> list[float]:
        return [float(metrics["eval_loss"]), float(metrics["eval_accuracy"])]

    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=two,
        n_trials=2,
        direction=["minimize", "maximize"],
        pruner=PruneTrialOne(),
    )

    assert isinstance(best, list) and best
    assert all(isinstance(run, BestRun) and len(run.objective) == 2 for run in best)
    states = {trial.state for trial in best[0].run_summary.trials}
    assert states == {optuna.trial.TrialState.COMPLETE}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "ray"}, r"backend='ray'.*not supported"),
        ({"backend": "sigopt"}, r"backend='sigopt'.*not supported"),
        ({"backend": "wandb"}, r"backend='wandb'.*not supported"),
        ({"backend": "hyperopt"}, r"backend must be 'optuna'"),
        ({"direction": "up"}, r"direction must be 'minimize' or 'maximize'"),
        ({"n_trials": 0}, r"n_trials must be an integer >= 1"),
        ({"n_jobs": 2}, r"n_jobs=2"),
    ],
)
def test_bad_search_settings_fail_before_anything_trains(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """Every setting the search cannot honour is one clear error before the first trial."""
    trainer = make_trainer(tmp_path / "out", report_to=[])
    with pytest.raises(ConfigurationError, match=message):
        trainer.hyperparameter_search(hp_space=hp_space, **change)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda out: Trainer(
                model=digits.DigitsMLP(hidden=16),
                args=TrainingArguments(output_dir=str(out), report_to="none"),
                train_dataset=digits.train_dataset(limit=32),
                eval_dataset=digits.eval_dataset(limit=32),
            ),
            r"needs Trainer\(model_init=...\)",
        ),
        (
            lambda out: Trainer(
                model_init=model_init,
                args=TrainingArguments(output_dir=str(out), report_to="none"),
                train_dataset=digits.train_dataset(limit=32),
            ),
            r"needs an eval_dataset",
        ),
    ],
)
def test_a_trainer_that_cannot_search_says_why_before_training(
    tmp_path: Path, build: Callable[[Path], Trainer], message: str
) -> None:
    """No ``model_init`` (one model cannot be trained afresh per trial), or no evaluation data
    (no objective): refused before any trial."""
    trainer = build(tmp_path / "out")
    with pytest.raises(ConfigurationError, match=message):
        trainer.hyperparameter_search(hp_space=hp_space, n_trials=1)
    assert not (tmp_path / "out").exists()


def test_default_objective_is_eval_loss_or_the_sum_of_the_other_metrics() -> None:
    """transformers' default: the loss alone, else the other metrics summed, leaving out the
    epoch and the speed figures."""
    speed = {"eval_runtime": 2.0, "eval_samples_per_second": 9.0, "epoch": 1.0}
    assert default_compute_objective({"eval_loss": 0.5, **speed}) == 0.5
    both = {"eval_loss": 0.5, "eval_accuracy": 0.75, "eval_f1": 0.5, **speed}
    assert default_compute_objective(both) == 1.25
