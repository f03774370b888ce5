"""Pushes to the MLflow model registry (``hub_model_id="models:/<name>"``), registered by the run's
MLflow sink on a real server (and a client store), read back with ``MlflowClient``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch

from tests.sinks.scripted import deliver_through_bus, fake_checkpoint, scripted_run
from tests.support.mlflow_server import MlflowServer
from tests.support.tiny_bert import tiny_bert
from trainbus.bus._events import Artifact, RunFinished
from trainbus.sinks.mlflow import PUSH_TAG, MLflowSink
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._trainer import Trainer

pytest.importorskip("mlflow")

pytestmark = pytest.mark.mlflow


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _bert_trainer(output_dir: Path, **overrides: Any) -> Trainer:
    model, rows = tiny_bert()
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "save_strategy": "no",
        "report_to": ["mlflow"],
        "disable_tqdm": True,
        **overrides,
    }
    return Trainer(model=model, args=TrainingArguments(**settings), train_dataset=rows)


@pytest.fixture
def tracking(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """The session's server as the run's tracking URI, in an experiment of the test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", _unique("push"))
    for name in ("MLFLOW_RUN_ID", "HF_MLFLOW_LOG_ARTIFACTS", "TRAINBUS_SINK_PROCESS"):
        monkeypatch.delenv(name, raising=False)
    return mlflow_server


def _mlflow_run(client: Any, experiment: str) -> Any:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([experiment_id])
    return run


def test_push_to_hub_registers_a_ready_version_of_the_runs_model(
    tracking: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``train()``, ``push_to_hub()`` leaves one READY version of the registered model,
    made from the run's MLflow run, its source the model files in that run's artifacts, which
    ``from_pretrained`` loads with the trained weights."""
    transformers = pytest.importorskip("transformers")
    name = _unique("digits")
    trainer = _bert_trainer(
        tmp_path / "out", push_to_hub=True, hub_model_id=f"models:/{name}", hub_strategy="end"
    )
    trainer.train()
    result = trainer.push_to_hub()
    assert result is not None and result.location == f"models:/{name}"

    client = _client(tracking.url)
    assert client.get_registered_model(name).name == name
    (version,) = client.search_model_versions(f"name='{name}'")
    run = _mlflow_run(client, os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert version.status == "READY"
    assert version.run_id == run.info.run_id
    assert version.source == f"{run.info.artifact_uri}/model-4"
    assert version.tags[PUSH_TAG].startswith(run.data.tags["trainbus.run_id"] + ":")

    local = client.download_artifacts(run.info.run_id, "model-4", str(tmp_path / "download"))
    loaded = transformers.BertForSequenceClassification.from_pretrained(local)
    expected = trainer.model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert (Path(local) / "README.md").is_file()


def test_every_save_registers_one_version_per_save(tracking: MlflowServer, tmp_path: Path) -> None:
    """Under ``every_save`` each save adds a version whose source is that checkpoint in the
    run's artifacts, and the final ``push_to_hub()`` one more."""
    name = _unique("digits")
    trainer = _bert_trainer(
        tmp_path / "out",
        push_to_hub=True,
        hub_model_id=f"models:/{name}",
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    client = _client(tracking.url)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: v.version)
    assert [v.source.rsplit("/", 1)[-1] for v in versions] == ["checkpoint-2", "checkpoint-4"]
    assert {v.status for v in versions} == {"READY"}
    artifacts = {a.path for a in client.list_artifacts(versions[0].run_id, "checkpoint-2")}
    assert "checkpoint-2/model.safetensors" in artifacts

    trainer.push_to_hub()
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.source.rsplit("/", 1)[-1] for v in versions) == [
        "checkpoint-2",
        "checkpoint-4",
        "model-4",
    ]


def _push_events(tmp_path: Path, name: str) -> list[Any]:
    """A scripted run whose checkpoint is pushed to registered model ``name``."""
    checkpoint = fake_checkpoint(tmp_path)
    events = scripted_run(3, eval_every=10)
    finished = events[-1]
    push = Artifact(
        run_id=finished.run_id,
        seq=finished.seq,
        time=finished.time,
        global_step=3,
        path=str(checkpoint),
        kind="directory",
        name=checkpoint.name,
        register_as=name,
    )
    end = RunFinished(run_id=finished.run_id, seq=finished.seq + 1, time=finished.time)
    return [*events[:-1], push, end]


async def test_a_replayed_push_registers_once(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """A push delivered again by a new sink that lost its state (a replay after a crash) finds
    the version it made and registers no second one."""
    name = _unique("digits")
    experiment = _unique("replay")
    events = _push_events(tmp_path, name)
    run_dir = tmp_path / "trainbus" / "run"
    for _ in range(2):
        sink = MLflowSink(mlflow_server.url, run_dir=run_dir, experiment_name=experiment)
        with anyio.fail_after(60):
            report = await deliver_through_bus(events, [sink], run_dir / f"bus-{uuid.uuid4().hex}")
        assert report["mlflow"].undelivered == 0 and report["mlflow"].quarantined == 0
        (run_dir / "mlflow.json").unlink()  # the next sink must find the run and version itself
    (version,) = _client(mlflow_server.url).search_model_versions(f"name='{name}'")
    assert version.source.endswith("/checkpoint-30") and version.status == "READY"


async def test_a_pushed_directory_that_is_gone_is_quarantined(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A push whose files vanished before delivery (a checkpoint rotated away) registers
    nothing and is counted as quarantined; the rest of the run is delivered."""
    name = _unique("digits")
    events = _push_events(tmp_path, name)
    for file in sorted((tmp_path / "checkpoint-30").rglob("*"), reverse=True):
        file.rmdir() if file.is_dir() else file.unlink()
    (tmp_path / "checkpoint-30").rmdir()
    run_dir = tmp_path / "trainbus" / "run"
    sink = MLflowSink(mlflow_server.url, run_dir=run_dir, experiment_name=_unique("gone"))
    with anyio.fail_after(60):
        report = await deliver_through_bus(events, [sink], run_dir)
    assert report["mlflow"].undelivered == 0 and report["mlflow"].quarantined == 1
    assert _client(mlflow_server.url).search_model_versions(f"name='{name}'") == []


async def test_the_client_path_registers_in_a_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a ``sqlite:`` store (the mlflow client's path) the push becomes a READY version too."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    name = _unique("digits")
    run_dir = tmp_path / "trainbus" / "run"
    sink = MLflowSink(uri, run_dir=run_dir, experiment_name="push")
    try:
        with anyio.fail_after(120):
            report = await deliver_through_bus(_push_events(tmp_path, name), [sink], run_dir)
    finally:
        mlflow.set_tracking_uri(None)
    assert report["mlflow"].undelivered == 0
    (version,) = _client(uri).search_model_versions(f"name='{name}'")
    assert version.status == "READY" and version.run_id == sink.run_id
    assert version.source.endswith("/checkpoint-30")
