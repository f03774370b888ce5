"""``Trainer.hyperparameter_search`` on Optuna: each trial a run of its own, grouped by the search.

transformers' API and its visible behaviour, with the run around each trial made ours::

    hyperparameter_search(hp_space, compute_objective, n_trials, direction, backend, hp_name)
      check everything (backend, model_init, direction, eval data, one process)   # nothing ran
      study = optuna.create_study(direction(s), **kwargs)
      for each trial (study.optimize, one after another in this process):
        args = the search's arguments + hp_space(trial), output_dir=<output_dir>/<trial name>
        trainer.train(trial=trial)          # a new run: run id, run directory, journal, trackers
          RunStarted(trial=TrialInfo(...))  # how trackers group the trials
          on_evaluate (during training): trial.report(objective, step); should_prune() stops
        pruned: optuna.TrialPruned (the trial is PRUNED, the run ``stopped``, the search goes on)
        no evaluation during training: evaluate() (the same run) gives the objective
      BestRun(trial number, objective, params, study)   # list of them for several directions

Where it differs from transformers, and why:

* The trial's directory. transformers writes a trial's checkpoints to ``<output_dir>/run-<n>``
  (or ``hp_name``'s) but keeps ``args.output_dir``; here ``args.output_dir`` *is* that directory
  while the trial trains, so checkpoints, the run directory (``trainbus/<run_id>``), TensorBoard's
  default folder and the final model of each trial sit together, and no trial rotates or
  overwrites another's checkpoints.
* The arguments. Each trial starts from the arguments the search began with plus its own
  parameters (transformers sets them onto the same object, so a parameter one trial set leaks
  into the next when the space is conditional), and they pass the arguments' own checks; the
  trainer's arguments are the original ones again after the search. A parameter that is not a
  ``TrainingArguments`` field is left to ``model_init`` (which reads ``trial.params``), with a
  warning, as transformers does.
* The seed. The trial's arguments apply before ``model_init`` runs, so a searched ``seed`` also
  seeds the model's initial weights (transformers builds the model under the previous seed).
* A SIGTERM or SIGINT stops the trial gracefully, as it stops any ``train()`` (its run ends
  ``killed``), and ends the search there: the trial is PRUNED (it stopped early), no further trial
  starts, and the best trial so far is returned; ``trainer.stopped_by_signal`` names the signal.
  transformers has no graceful stop: the signal ends the process.
* Pruning stops the run at the evaluation that asked for it (``should_training_stop``, and no
  checkpoint at that step), closes it normally with status ``stopped`` (its sinks flushed, its
  journal complete), then tells Optuna ``TrialPruned``; transformers raises from inside the loop
  after calling ``on_train_end``.

Trials run sequentially in one process; a distributed search (``torchrun``) is refused before
anything trains, as is ``n_jobs`` other than 1. Optuna is imported only when a search starts
(``pip install 'trainbus[optuna]'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import TrialInfo
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._run_info import json_safe
from trainbus.trainer._state import TrainerControl, TrainerState
from trainbus.trainer._support import refusal

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = [
    "BACKENDS",
    "BestRun",
    "default_compute_objective",
    "default_hp_space_optuna",
    "search_hyperparameters",
    "trial_arguments",
]

log = structlog.get_logger(__name__)

BACKENDS: Final = ("optuna",)
"""The search backends trainbus runs."""
_OTHER_BACKENDS: Final = ("ray", "sigopt", "wandb")
"""transformers' other backends, refused by name."""
_DIRECTIONS: Final = ("minimize", "maximize")
_OPTIMIZE_OPTIONS: Final = ("timeout", "gc_after_trial", "catch")
"""``hyperparameter_search`` keywords that go to ``study.optimize``; the rest to
``optuna.create_study``."""
_SPEED_SUFFIXES: Final = ("_runtime", "_per_second")

HpSpace = Callable[[Any], Mapping[str, Any]]
Objective = Callable[[dict[str, Any]], Any]


class BestRun(NamedTuple):
    """The best trial of a search, as transformers' ``BestRun``.

    Args:
        run_id: the trial's number, as text (transformers' meaning: its files are in
            ``<output_dir>/run-<run_id>`` unless ``hp_name`` named the trial).
        objective: its objective (a list of values for a multi-objective search).
        hyperparameters: the parameters it tried.
        run_summary: the Optuna study; each trial's ``user_attrs`` hold its trainbus run id
            (``trainbus_run_id``) and directory (``trainbus_output_dir``).
    """

    run_id: str
    objective: float | list[float]
    hyperparameters: dict[str, Any]
    run_summary: Any | None = None


def default_compute_objective(metrics: Mapping[str, Any]) -> float:
    """transformers' default objective: ``eval_loss`` when the evaluation has no other metric,
    else the sum of the other metrics (``epoch`` and the speed figures left out)."""
    rest = {
        key: value
        for key, value in metrics.items()
        if key not in ("eval_loss", "epoch") and not key.endswith(_SPEED_SUFFIXES)
    }
    if not rest:
        loss = metrics.get("eval_loss")
        if not isinstance(loss, int | float):
            raise ConfigurationError(
                "the default objective needs 'eval_loss' in the evaluation's metrics, got "
                f"{sorted(metrics)}; pass compute_objective="
            )
        return float(loss)
    return float(sum(rest.values()))


def default_hp_space_optuna(trial: Any) -> dict[str, Any]:
    """transformers' default Optuna space: learning rate, epochs, seed and batch size."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "seed": trial.suggest_int("seed", 1, 40),
        "per_device_train_batch_size": trial.suggest_categorical(
            "per_device_train_batch_size", [4, 8, 16, 32, 64]
        ),
    }


def search_hyperparameters(
    trainer: Trainer,
    hp_space: HpSpace | None,
    compute_objective: Objective | None,
    n_trials: int,
    direction: str | Sequence[str],
    backend: Any,
    hp_name: Callable[[Any], str] | None,
    **kwargs: Any,
) -> BestRun | list[BestRun]:
    """Run the search (see the module docstring); everything is checked before a trial trains.

    Args:
        trainer: the trainer whose ``model_init`` builds each trial's model.
        hp_space: ``trial -> {argument: value}``; ``default_hp_space_optuna`` when ``None``.
        compute_objective: ``metrics -> objective``; ``default_compute_objective`` when ``None``.
        n_trials: how many trials to run.
        direction: ``"minimize"`` or ``"maximize"``, or a list of them (several objectives).
        backend: ``"optuna"``, or ``None`` for Optuna when it is installed.
        hp_name: ``trial -> name`` for the trial's run and directory; ``run-<number>`` otherwise.
        kwargs: ``timeout``, ``gc_after_trial`` and ``catch`` go to ``study.optimize``
            (``n_jobs`` must be 1), everything else to ``optuna.create_study`` (``storage``,
            ``sampler``, ``pruner``, ``study_name``, ...).
    """
    _check_backend(backend)
    if trainer.model_init is None:
        raise ConfigurationError(
            "hyperparameter_search needs Trainer(model_init=...): every trial trains a new model, "
            "which model_init builds (model=... is one model, trained once)"
        )
    directions = _check_direction(direction)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigurationError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if trainer.args.world_size > 1:
        raise ConfigurationError(
            f"hyperparameter_search runs its trials one after another in one process; this job "
            f"has {trainer.args.world_size} (torchrun): run the search without torchrun"
        )
    if trainer.eval_dataset is None:
        raise ConfigurationError(
            "hyperparameter_search needs an eval_dataset: each trial's objective comes from "
            "evaluate()'s metrics; pass Trainer(eval_dataset=...)"
        )
    n_jobs = kwargs.pop("n_jobs", 1)
    if n_jobs != 1:
        raise ConfigurationError(
            f"n_jobs={n_jobs!r}: trials share one trainer and run one after another here; "
            "leave n_jobs at 1"
        )
    optimize = {key: kwargs.pop(key) for key in _OPTIMIZE_OPTIONS if key in kwargs}
    optuna = _import_optuna()
    study = optuna.create_study(
        direction=None if len(directions) > 1 else directions[0],
        directions=directions if len(directions) > 1 else None,
        **kwargs,
    )
    search = _Search(
        trainer,
        hp_space=hp_space or default_hp_space_optuna,
        compute_objective=compute_objective or default_compute_objective,
        hp_name=hp_name,
        several=len(directions) > 1,
        optuna=optuna,
    )
    return search.run(study, n_trials, optimize)


def _check_backend(backend: Any) -> None:
    name = None if backend is None else str(getattr(backend, "value", backend)).lower()
    if name is None or name in BACKENDS:
        return
    if name in _OTHER_BACKENDS:
        raise ConfigurationError(
            refusal(f"hyperparameter_search(backend={name!r})", "Optuna only: backend='optuna'")
        )
    raise ConfigurationError(
        f"backend must be 'optuna' or None, got {backend!r} (transformers' 'ray', 'sigopt' and "
        "'wandb' are not supported by trainbus)"
    )


def _check_direction(direction: str | Sequence[str]) -> list[str]:
    given = [direction] if isinstance(direction, str) else list(direction)
    if not given or any(d not in _DIRECTIONS for d in given):
        raise ConfigurationError(
            f"direction must be 'minimize' or 'maximize', or a list of them, got {direction!r}"
        )
    return given


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ConfigurationError(
            f"hyperparameter_search needs Optuna ({exc}); pip install 'trainbus[optuna]'"
        ) from exc
    return optuna


def trial_arguments(
    base: TrainingArguments, params: Mapping[str, Any], output_dir: str
) -> TrainingArguments:
    """``base`` with a trial's parameters and directory; checked as any arguments are.

    A value is cast to the type of the field's current value (an Optuna integer for a float
    field), as transformers does. Parameters that are not fields are skipped with a warning:
    ``model_init`` may read them from the trial.
    """
    fields = {field.name for field in dataclasses.fields(base) if field.init}
    changes: dict[str, Any] = {}
    for key, value in params.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            log.warning(
                "hyperparameter_not_an_argument",
                name=key,
                consequence="not set on TrainingArguments; model_init may read it from the trial",
                **({"did_you_mean": close[0]} if close else {}),
            )
            continue
        current = getattr(base, key)
        if current is not None and type(current) in (int, float, str, bool):
            value = type(current)(value)
        changes[key] = value
    return dataclasses.replace(base, **changes, output_dir=output_dir)


class _Search:
    """One ``hyperparameter_search`` call: the objective Optuna calls, and what it restores."""

    def __init__(
        self,
        trainer: Trainer,
        *,
        hp_space: HpSpace,
        compute_objective: Objective,
        hp_name: Callable[[Any], str] | None,
        several: bool,
        optuna: Any,
    ) -> None:
        self.trainer = trainer
        self.base_args = trainer.args
        self.hp_space = hp_space
        self.compute_objective = compute_objective
        self.hp_name = hp_name
        self.several = several
        self.optuna = optuna
        self.search_id = uuid.uuid4().hex[:12]
        self.name = self.base_args.run_name or str(self.base_args.output_dir)
        self.trial: Any = None
        """The trial training now (``None`` between trials and outside ``train()``)."""
        self.run_id: str | None = None
        self.pruned_at: int | None = None
        self.names: dict[str, int] = {}

    def run(
        self, study: Any, n_trials: int, optimize: Mapping[str, Any]
    ) -> BestRun | list[BestRun]:
        trainer = self.trainer
        hook = _TrialCallback(self)
        trainer.hp_search_backend = "optuna"
        trainer.hp_space, trainer.hp_name = self.hp_space, self.hp_name
        trainer.compute_objective = self.compute_objective
        trainer.add_callback(hook)
        log.info("hyperparameter_search_started", search=self.name, n_trials=n_trials)
        try:
            study.optimize(self.objective, n_trials=n_trials, **optimize)
        finally:
            trainer.remove_callback(hook)
            trainer.args = self.base_args
            trainer._search_trial = None
            trainer.hp_search_backend = None
        return self._best(study)

    def objective(self, trial: Any) -> Any:
        """Train one trial as a run of its own; its objective, or ``TrialPruned``."""
        trainer = self.trainer
        params = self.hp_space(trial)
        name = self._trial_name(trial)
        output_dir = os.path.join(str(self.base_args.output_dir), name)
        trainer.args = trial_arguments(self.base_args, params, output_dir)
        trainer.objective = None
        trainer._search_trial = functools.partial(self._info, trial, name)
        self.trial, self.run_id, self.pruned_at = trial, None, None
        log.info("trial_started", search=self.name, trial=trial.number, output_dir=output_dir)
        try:
            trainer.train(trial=trial)
        finally:
            self.trial = None
        trial.set_user_attr("trainbus_run_id", self.run_id)
        trial.set_user_attr("trainbus_output_dir", output_dir)
        stopped_by = trainer.stopped_by_signal
        if stopped_by is not None:  # SIGTERM/SIGINT stopped the trial: the search ends with it
            log.warning("hyperparameter_search_stopped", trial=trial.number, signal=stopped_by.name)
            trial.study.stop()
            raise self.optuna.TrialPruned(f"stopped by {stopped_by.name}")
        if self.pruned_at is not None:
            log.info("trial_pruned", trial=trial.number, step=self.pruned_at, run_id=self.run_id)
            raise self.optuna.TrialPruned(f"pruned at step {self.pruned_at}")
        if trainer.objective is None:  # no evaluation during training: one now, in its run
            trainer.objective = self.compute_objective(dict(trainer.evaluate()))
        return trainer.objective

    def report(self, step: int, metrics: Mapping[str, Any], control: TrainerControl) -> None:
        """An evaluation during a trial's training: the objective to Optuna, and pruning."""
        trial = self.trial
        if trial is None:
            return
        objective = self.compute_objective(dict(metrics))
        self.trainer.objective = objective
        if self.several:  # as transformers: several objectives are never pruned
            return
        trial.report(float(objective), step)
        if trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True
            control.should_save = False

    def _info(self, trial: Any, name: str) -> TrialInfo:
        """The trial's card for ``RunStarted``, with every parameter picked so far (``model_init``
        may have picked some after ``hp_space``)."""
        return TrialInfo(
            search=self.name,
            search_id=self.search_id,
            number=trial.number,
            name=name,
            params=json_safe(dict(trial.params)),
        )

    def _trial_name(self, trial: Any) -> str:
        name = self.hp_name(trial) if self.hp_name is not None else f"run-{trial.number}"
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ConfigurationError(
                f"hp_name must return a plain directory name (it names the trial's directory "
                f"under output_dir), got {name!r} for trial {trial.number}"
            )
        if name in self.names:
            raise ConfigurationError(
                f"hp_name returned {name!r} for trials {self.names[name]} and {trial.number}; "
                "each trial needs its own name (it names the trial's directory and runs)"
            )
        self.names[name] = trial.number
        return name

    def _best(self, study: Any) -> BestRun | list[BestRun]:
        try:
            best = study.best_trials if self.several else [study.best_trial]
        except ValueError as exc:  # Optuna: no trial completed
            raise RuntimeError(
                f"hyperparameter_search: no trial completed (all pruned or failed): {exc}"
            ) from exc
        runs = [
            BestRun(
                str(trial.number),
                list(trial.values) if self.several else trial.value,
                dict(trial.params),
                study,
            )
            for trial in best
        ]
        for trial in best:
            log.info(
                "hyperparameter_search_best_trial",
                search=self.name,
                trial=trial.number,
                objective=trial.values if self.several else trial.value,
                hyperparameters=trial.params,
                run_id=trial.user_attrs.get("trainbus_run_id"),
                output_dir=trial.user_attrs.get("trainbus_output_dir"),
            )
        return runs if self.several else runs[0]


class _TrialCallback(TrainerCallback):
    """The search's part in each trial's training: the run id, and the objective at each
    evaluation (``on_evaluate``, during training only, as transformers reports it)."""

    def __init__(self, search: _Search) -> None:
        self.search = search

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        bus = self.search.trainer._bus
        if self.search.trial is not None and bus is not None:
            self.search.run_id = bus.run_id

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.search.trainer.is_in_train:
            metrics = kwargs.get("metrics") or {}
            self.search.report(state.global_step, metrics, control)
