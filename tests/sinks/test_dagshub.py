"""DagsHub sink against a real ``mlflow server`` reached under a DagsHub-style repository path."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from tests.support.mlflow_server import MlflowServer
from trainbus.bus._errors import ConfigurationError
from trainbus.orchestrator.registry import available_integrations, build_sinks
from trainbus.sinks.dagshub import DagsHubSink, parse_repo

pytestmark = pytest.mark.mlflow

OWNER, REPO = "ada", "tiny-model"
PREFIX = f"/{OWNER}/{REPO}.mlflow"
TOKEN = "dagshub-token-0123456789"


class RepoPathTransport(httpx.AsyncBaseTransport):
    """Serves ``<host>/<owner>/<repo>.mlflow/...`` as DagsHub does, by forwarding each request
    to the real local server with the repository prefix removed; remembers the auth headers."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.authorizations: set[str] = set()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.startswith(PREFIX + "/"):
            return httpx.Response(404, json={"error_code": "NOT_A_DAGSHUB_REPO_PATH"})
        self.paths.append(path)
        self.authorizations.add(request.headers.get("authorization", ""))
        request.url = request.url.copy_with(raw_path=request.url.raw_path[len(PREFIX) :])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _env(server: MlflowServer, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.url + PREFIX, **extra}


def _history(client: Any, run_id: str | None, key: str) -> list[tuple[int, Any]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


async def test_run_reaches_the_repository_server_with_token_auth(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Built from DagsHub's variables, the sink logs every metric under raw keys, params and
    the final status to the repository's MLflow server, uploads checkpoints under artifacts/,
    authenticates with DAGSHUB_USER_TOKEN and never logs the token."""
    from mlflow.tracking import MlflowClient

    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"\x01" * 512)
    experiment = f"trainbus-dagshub-{uuid.uuid4().hex[:8]}"
    env = _env(
        mlflow_server,
        MLFLOW_EXPERIMENT_NAME=experiment,
        DAGSHUB_USER_TOKEN=TOKEN,
        HF_DAGSHUB_LOG_ARTIFACTS="1",
        HF_MLFLOW_LOG_ARTIFACTS="0",
        BRANCH="dev",
    )
    run_dir = tmp_path / "trainbus" / "run"  # the layout: the checkpoint is in its output_dir
    sink = DagsHubSink.from_env(env, run_dir=run_dir, run_name="tiny-run")
    transport = RepoPathTransport()
    sink._transport = transport  # from_env takes no transport; route through the repo path
    with capture_logs() as logs, anyio.fail_after(60):
        report = await deliver_through_bus(
            scripted_run(20, eval_every=10, checkpoint=checkpoint), [sink], run_dir
        )
    assert report["dagshub"].undelivered == 0
    assert (sink.owner, sink.repo, sink.branch, sink.model_name) == (OWNER, REPO, "dev", "main")
    basic = base64.b64encode(f"{TOKEN}:{TOKEN}".encode()).decode()
    assert transport.authorizations == {f"Basic {basic}"}
    assert TOKEN not in repr(logs)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    assert sink.run_id is not None
    run = client.get_run(sink.run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"
    assert _history(client, run.info.run_id, "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 21)
    ]
    assert _history(client, run.info.run_id, "eval_accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20)
    ]
    assert run.data.params["hub_token"] == "***"
    files = [a.path for a in client.list_artifacts(run.info.run_id, "artifacts/checkpoint-20")]
    assert files == ["artifacts/checkpoint-20/model.safetensors"]
    saved = json.loads((run_dir / "dagshub" / "mlflow.json").read_text())
    assert saved["run_id"] == run.info.run_id
    assert not (run_dir / "mlflow.json").exists()


async def test_local_sqlite_repository_uri_works_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local ``sqlite:///.../<owner>/<repo>.mlflow`` URI with DAGSHUB_USER_TOKEN (how the
    DagsHub integration runs without dagshub.com) goes through the mlflow client: metrics,
    params, final status and checkpoints under artifacts/, read back with MLflow's client."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) for SQLite stores
    (tmp_path / OWNER).mkdir()
    uri = f"sqlite:///{tmp_path / OWNER / REPO}.mlflow"
    env = {"MLFLOW_TRACKING_URI": uri, "DAGSHUB_USER_TOKEN": TOKEN, "HF_DAGSHUB_LOG_ARTIFACTS": "1"}
    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"\x01" * 512)
    run_dir = tmp_path / "trainbus" / "run"
    sink = DagsHubSink.from_env(env, run_dir=run_dir, run_name="tiny-run")
    assert sink.uses_client and (sink.owner, sink.repo) == (OWNER, REPO)
    assert sink.wants_final_model  # HF_DAGSHUB_LOG_ARTIFACTS: the trained model too
    with anyio.fail_after(120):
        report = await deliver_through_bus(
            scripted_run(20, eval_every=10, checkpoint=checkpoint), [sink], run_dir
        )
    assert report["dagshub"].undelivered == 0
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert [s for s, _ in _history(client, sink.run_id, "loss")] == list(range(1, 21))
    assert run.data.params["hub_token"] == "***"
    files = [a.path for a in client.list_artifacts(sink.run_id, "artifacts/checkpoint-20")]
    assert files == ["artifacts/checkpoint-20/model.safetensors"]


def test_repository_is_parsed_from_the_tracking_uri() -> None:
    """Owner and repository come from the last two path segments; dots in the name survive."""
    assert parse_repo("https://dagshub.com/ada/my.repo.mlflow") == ("ada", "my.repo")
    assert parse_repo("https://dagshub.com/ada/tiny.mlflow/") == ("ada", "tiny")


@pytest.mark.parametrize(
    "uri", ["https://dagshub.com/tiny.mlflow", "https://dagshub.com/ada/tiny", "http://h/a/.mlflow"]
)
def test_uri_without_a_repository_is_refused_with_a_sentence(uri: str, tmp_path: Path) -> None:
    """A tracking URI that names no <owner>/<repo>.mlflow fails before the run, naming the
    variable and the expected shape."""
    with pytest.raises(ConfigurationError, match=r"MLFLOW_TRACKING_URI .*<owner>/<repo>\.mlflow"):
        DagsHubSink.from_env({"MLFLOW_TRACKING_URI": uri}, run_dir=tmp_path, run_name="r")


def test_missing_uri_is_refused_with_a_sentence(tmp_path: Path) -> None:
    """Without MLFLOW_TRACKING_URI the error says which variable to set (HF hit an attribute
    error before its own check)."""
    with pytest.raises(ConfigurationError, match="MLFLOW_TRACKING_URI must name"):
        DagsHubSink.from_env({"DAGSHUB_USER_TOKEN": TOKEN}, run_dir=tmp_path, run_name="r")


def test_report_to_dagshub_builds_it_but_all_leaves_it_to_mlflow(tmp_path: Path) -> None:
    """report_to=["dagshub"] builds the DagsHub sink (DISABLE_MLFLOW_INTEGRATION concerns the
    mlflow name only) with MLflow's own credentials taking precedence over the DagsHub token;
    "all" picks only the MLflow sink for the same URI."""
    env = {
        "MLFLOW_TRACKING_URI": "https://dagshub.com/ada/tiny.mlflow",
        "MLFLOW_TRACKING_USERNAME": "ada",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "DAGSHUB_USER_TOKEN": TOKEN,
        "DISABLE_MLFLOW_INTEGRATION": "true",
    }
    [(name, sink)] = build_sinks(["dagshub"], env, run_dir=tmp_path, run_name="r")
    assert name == "dagshub" and isinstance(sink, DagsHubSink)
    assert sink._auth == ("ada", "pw")
    assert "dagshub" not in available_integrations(env)
    assert "mlflow" in available_integrations({**env, "DISABLE_MLFLOW_INTEGRATION": "false"})


def test_trainer_uploads_checkpoints_and_the_final_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report_to=["dagshub"] with HF_DAGSHUB_LOG_ARTIFACTS on a local repository store: the
    trainer writes the final model because the sink asks for it, and the run holds it and the
    checkpoint under artifacts/, with train, evaluate and predict metrics in one run."""
    from mlflow.tracking import MlflowClient

    from tests.support.tiny_bert import tiny_bert
    from trainbus import Trainer, TrainingArguments

    monkeypatch.chdir(tmp_path)
    (tmp_path / OWNER).mkdir()
    uri = f"sqlite:///{tmp_path / OWNER / REPO}.mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", TOKEN)
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "1")
    model, rows = tiny_bert()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=["dagshub"],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:4])
    trainer.train()
    trainer.evaluate()
    trainer.predict(rows[:4])
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs(["0"])
    assert {"loss", "eval_loss", "test_loss"} <= set(run.data.metrics)
    folders = {a.path for a in client.list_artifacts(run.info.run_id, "artifacts")}
    assert folders == {"artifacts/checkpoint-2", "artifacts/final_model"}
    final = {
        Path(a.path).name for a in client.list_artifacts(run.info.run_id, "artifacts/final_model")
    }
    assert {"model.safetensors", "config.json"} <= final
