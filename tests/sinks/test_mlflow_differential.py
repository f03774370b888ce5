"""The same script on transformers' ``MLflowCallback`` and on our MLflow sink, each into its own
SQLite store, read back with MLflow's client and compared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hf_differential import run_script

pytest.importorskip("transformers")
pytest.importorskip("mlflow")

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

PARAMS_OURS_ONLY = {"resume_only_model", "warmup_ratio"}
"""Arguments our ``TrainingArguments`` has and transformers 5 no longer has."""

PARAMS_DIFFERENT = {
    "id2label",  # JSON keeps no int keys: {'0': 'LABEL_0'} for transformers' {0: 'LABEL_0'}
    "accelerator_config",  # transformers expands the dataclass; we keep None
    "output_dir",  # each run's own directory
}
"""Params whose values differ on purpose (see docs/integrations/mlflow.md)."""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import mlflow

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "1")
    monkeypatch.setenv("COMET_DISABLE_AUTO_LOGGING", "1")
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run() is not None:  # transformers' evaluate() leaves one open
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _run(flavour: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    workdir.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(None)  # forget the other flavour's URI
    run_script("mlflow_tracking", flavour, workdir)  # type: ignore[arg-type]
    while mlflow.active_run() is not None:
        mlflow.end_run()
    return uri


def _read(uri: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(["0"], order_by=["attributes.start_time ASC"])
    trained = runs[0]
    metrics: dict[str, list[int]] = {}
    for run in runs:
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            metrics.setdefault(key, []).extend(m.step for m in history)
    models = client.search_logged_models(experiment_ids=["0"])
    checkpoints = {}
    for model in models:  # transformers: one pyfunc model per checkpoint
        root = Path(model.artifact_location) / "artifacts" / model.name
        checkpoints[model.name] = sorted(p.name for p in root.iterdir())
    for item in client.list_artifacts(trained.info.run_id):  # ours: run artifacts
        files = client.list_artifacts(trained.info.run_id, item.path)
        checkpoints[item.path] = sorted(Path(f.path).name for f in files)
    return {
        "runs": runs,
        "params": trained.data.params,
        "tags": trained.data.tags,
        "metrics": {key: sorted(steps) for key, steps in metrics.items()},
        "checkpoints": checkpoints,
        "status": trained.info.status,
    }


def test_same_params_metrics_tags_and_checkpoints_as_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same param keys and values (differences listed), same metric keys and steps, same
    mlflow.* tags and the same checkpoint files; transformers splits train and evaluate()
    into two runs, ours keeps one and adds predict()'s test_* metrics."""
    theirs = _read(_run("transformers", tmp_path / "hf", monkeypatch))
    ours = _read(_run("trainbus", tmp_path / "tb", monkeypatch))

    assert len(ours["runs"]) == 1 and ours["status"] == "FINISHED"
    assert len(theirs["runs"]) == 2  # the second holds evaluate()'s metrics, no params

    assert len(theirs["params"]) > 100
    assert set(ours["params"]) - set(theirs["params"]) == PARAMS_OURS_ONLY
    assert set(theirs["params"]) - set(ours["params"]) == set()
    differing = {key for key, value in theirs["params"].items() if ours["params"][key] != value}
    assert differing == PARAMS_DIFFERENT

    def mlflow_tags(tags: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in tags.items() if k.startswith("mlflow.")}

    assert mlflow_tags(ours["tags"]) == mlflow_tags(theirs["tags"])

    test_keys = {k for k in ours["metrics"] if k.startswith("test_")}
    assert test_keys >= {"test_loss", "test_runtime"}
    assert {k: v for k, v in ours["metrics"].items() if k not in test_keys} == theirs["metrics"]
    assert ours["metrics"]["test_loss"] == [4]

    assert set(theirs["checkpoints"]) == {"checkpoint-2", "checkpoint-4"}
    assert set(ours["checkpoints"]) == set(theirs["checkpoints"])
    for name, files in theirs["checkpoints"].items():
        # The arguments are JSON in our checkpoints, never a pickle.
        expected = [f.replace("training_args.bin", "training_args.json") for f in files]
        assert "model.safetensors" in files
        assert sorted(ours["checkpoints"][name]) == sorted(expected)
