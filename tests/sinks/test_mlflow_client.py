"""MLflow sink on the client path: ``file:`` and ``sqlite:`` stores, MLflow's default store and
Databricks, read back with MLflow's own client."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.sinks.scripted import (
    T0,
    deliver_through_bus,
    eval_logs,
    fake_checkpoint,
    scripted_run,
    train_logs,
)
from tests.support.mlflow_server import metric_history
from trainbus.bus._errors import PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Log
from trainbus.sinks._mlflow_api import refusal_is_about_points
from trainbus.sinks._mlflow_client import map_client_errors
from trainbus.sinks.mlflow import MLflowSink

pytest.importorskip("mlflow")

pytestmark = pytest.mark.mlflow


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Own HOME and working directory (MLflow's default store lands there), no tracking URI
    from the machine, and MLflow's process-wide URI reset afterwards."""
    import mlflow

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    yield cwd
    mlflow.set_tracking_uri(None)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _stores(tmp_path: Path) -> dict[str, str]:
    return {
        "sqlite": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        "file": (tmp_path / "store" / "mlruns").as_uri(),
    }


@pytest.mark.parametrize("store", ["sqlite", "file"])
async def test_local_store_reads_back_exactly(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real Bus, a ``sqlite:`` or ``file:`` store holds every metric once, params as
    ``str()`` writes them, the mlflow.* tags of ``mlflow.start_run``, checkpoint files and the
    final status, as MLflow's own client reads them."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file: otherwise
    (tmp_path / "store").mkdir()
    uri = _stores(tmp_path)[store]
    run_dir = tmp_path / "trainbus" / "run"
    events = scripted_run(30, eval_every=10, checkpoint=fake_checkpoint(tmp_path))
    sink = MLflowSink(
        uri, run_dir=run_dir, experiment_name="trainbus", tags={"team": "s"}, log_artifacts=True
    )
    assert sink.uses_client
    with anyio.fail_after(120):
        report = await deliver_through_bus(events, [sink], run_dir)
    assert report["mlflow"].undelivered == 0 and report["mlflow"].quarantined == 0
    client = _client(uri)
    run = client.get_run(sink.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "trainbus"
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert run.info.end_time == round(events[-1].time * 1000)
    assert metric_history(client, sink.run_id, "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 31)
    ]
    assert metric_history(client, sink.run_id, "eval_accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20, 30)
    ]
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["hidden_size"] == "16"
    assert params["optim_args"] == "{'betas': [0.9, 0.99]}"
    tags = run.data.tags
    assert tags["team"] == "s" and tags["trainbus.run_id"] == "run-1"
    assert tags["mlflow.runName"] == "tiny-run"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == sys.argv[0]
    assert tags["mlflow.user"]
    files = {a.path for a in client.list_artifacts(sink.run_id, "checkpoint-30")}
    assert files == {"checkpoint-30/model.safetensors", "checkpoint-30/sub"}
    nested = client.list_artifacts(sink.run_id, "checkpoint-30/sub")
    assert [a.path for a in nested] == ["checkpoint-30/sub/trainer_state.json"]
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == sink.run_id


async def test_a_new_process_resumes_the_run_and_adds_no_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second sink on the same run directory (a restart, or evaluate() after train()) logs
    into the same run, sends params once, and re-sent events add no points, even to the file
    store, which keeps duplicates."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = _stores(tmp_path)["file"]
    run_dir = tmp_path / "run"
    events = scripted_run(12, eval_every=4)
    ids = []
    for part in (events[:8], events):
        sink = MLflowSink(uri, run_dir=run_dir)
        with anyio.fail_after(60):
            await sink.open()
            await sink.write(part)
            await sink.close()
        ids.append(sink.run_id)
    assert ids[0] == ids[1]
    client = _client(uri)
    assert len(client.search_runs(["0"])) == 1
    assert [s for s, _ in metric_history(client, ids[0], "loss")] == list(range(1, 13))
    assert [s for s, _ in metric_history(client, ids[0], "eval_loss")] == [4, 8, 12]
    assert client.get_run(ids[0]).info.status == "FINISHED"


async def test_unset_uri_logs_to_mlflows_default_store(
    _isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MLFLOW_TRACKING_URI, naming mlflow logs where MLflow itself would (a SQLite file
    in the working directory for this MLflow version), while "all" leaves MLflow out."""
    import mlflow

    assert not MLflowSink.is_available({})
    sink = MLflowSink.from_env({}, run_dir=tmp_path / "run", run_name="r")
    assert sink.uses_client and sink.tracking_uri is None
    with anyio.fail_after(60):
        await sink.open()
        await sink.write(scripted_run(3))
        await sink.close()
    default = mlflow.get_tracking_uri()  # the same rule, asked in the same directory
    assert str(_isolated) in default
    runs = _client(default).search_runs(["0"])
    assert [r.info.run_id for r in runs] == [sink.run_id]
    assert [s for s, _ in metric_history(_client(default), sink.run_id, "loss")] == [1, 2, 3]

    # evaluate() or `trainbus sync` from another directory still finds the run's store.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = MLflowSink.from_env({}, run_dir=tmp_path / "run", run_name="r")
    later = Log(run_id="run-1", seq=50, time=T0 + 50, global_step=4, logs={"loss": 0.5})
    with anyio.fail_after(60):
        await again.open()
        await again.write([later])
        await again.close()
    assert again.run_id == sink.run_id
    assert [s for s, _ in metric_history(_client(default), sink.run_id, "loss")] == [1, 2, 3, 4]
    assert not (elsewhere / "mlflow.db").exists()


async def test_a_store_mlflow_refuses_disables_the_sink_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3 refuses the ``file:`` store unless MLFLOW_ALLOW_FILE_STORE is set: opening fails
    once, permanently, with MLflow's reason, as transformers' callback fails at its first call."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    sink = MLflowSink(_stores(tmp_path)["file"], run_dir=tmp_path / "run")
    with anyio.fail_after(60), pytest.raises(PermanentSinkError, match="MLFLOW_ALLOW_FILE_STORE"):
        await sink.open()


@pytest.mark.parametrize(
    ("uri", "named"), [("databricks", "DATABRICKS_HOST"), ("databricks://team", "'team'")]
)
async def test_databricks_is_routed_to_the_client_and_missing_credentials_say_so(
    uri: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Databricks URI goes to the mlflow client; without credentials (none can exist here)
    opening fails once with one line naming DATABRICKS_HOST or the profile."""
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    sink = MLflowSink.from_env({"MLFLOW_TRACKING_URI": uri}, run_dir=tmp_path, run_name="r")
    assert sink.uses_client
    with anyio.fail_after(60), pytest.raises(PermanentSinkError) as caught:
        await sink.open()
    message = str(caught.value)
    assert "\n" not in message and named in message and "DATABRICKS_TOKEN" in message


def test_client_errors_map_to_the_runtimes() -> None:
    """MLflow's busy or failing codes and OS errors may pass; a refused value is permanent and
    keeps its code, so the runtime can split the batch; a refused run is never split."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    def raised(exc: Exception) -> Exception:
        try:
            with map_client_errors("sqlite:///x.db"):
                raise exc
        except Exception as mapped:
            return mapped
        raise AssertionError("nothing raised")

    busy = raised(MlflowException("locked", error_code=codes.TEMPORARILY_UNAVAILABLE))
    assert isinstance(busy, RetryableSinkError)
    assert isinstance(raised(OSError("disk full")), RetryableSinkError)
    value = raised(MlflowException("bad", error_code=codes.INVALID_PARAMETER_VALUE))
    assert isinstance(value, PermanentSinkError) and refusal_is_about_points(value)
    gone = raised(MlflowException("no run", error_code=codes.RESOURCE_DOES_NOT_EXIST))
    assert isinstance(gone, PermanentSinkError) and not refusal_is_about_points(gone)
    assert isinstance(raised(KeyError("bug")), KeyError)
