"""A hyper-parameter search in MLflow: one parent run per search, each trial a nested child run.

Runs a small Optuna search on the digits demo against the session's real ``mlflow server`` and
reads the runs back with ``MlflowClient``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

from tests.support.digits_search import (  # noqa: E402  # after the skips: it imports optuna
    EVAL_EVERY,
    PruneTrialOne,
    hp_space,
    make_trainer,
)

pytestmark = pytest.mark.mlflow


def test_each_trial_is_a_child_run_of_the_search_run(
    tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three trials, the second pruned: one parent run named after the search, three children
    tagged with ``mlflow.parentRunId`` and named after their trials, each with its own learning
    rate and metrics (the pruned one's stop at its first evaluation), the parent ended."""
    experiment = f"search-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    trainer = make_trainer(tmp_path, report_to=["mlflow"])
    trainer.args.run_name = "digits-search"

    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        n_trials=3,
        hp_name=lambda trial: f"trial-{trial.number}",
        sampler=optuna.samplers.RandomSampler(seed=1),
        pruner=PruneTrialOne(),
    )

    client = mlflow_tracking.MlflowClient(mlflow_server.url)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [run for run in runs if "trainbus.search_id" in run.data.tags]
    assert parent.info.run_name == "digits-search"
    assert parent.info.status == "FINISHED" and parent.info.end_time is not None
    children = sorted(
        (run for run in runs if run is not parent and "trainbus.search_id" not in run.data.tags),
        key=lambda run: int(run.data.tags["trainbus.trial"]),
    )
    assert len(runs) == 4 and len(children) == 3
    study = best.run_summary
    for trial, child in zip(study.trials, children, strict=True):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.run_name == f"trial-{trial.number}"
        assert child.data.tags["trainbus.run_id"] == trial.user_attrs["trainbus_run_id"]
        assert float(child.data.params["learning_rate"]) == trial.params["learning_rate"]
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval_loss")]
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        assert steps == ([EVAL_EVERY] if pruned else [EVAL_EVERY, 2 * EVAL_EVERY])
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.PRUNED) == 1
