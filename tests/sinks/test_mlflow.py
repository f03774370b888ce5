"""MLflow sink against a real ``mlflow server`` on 127.0.0.1, read back with MLflow's own client."""

from __future__ import annotations

import base64
import json
import math
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from tests.sinks.scripted import (
    FAST_RETRY,
    T0,
    deliver_through_bus,
    eval_logs,
    fake_checkpoint,
    scripted_run,
    train_logs,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.mlflow_server import MlflowServer, metric_history
from trainbus.bus._bus import Bus
from trainbus.bus._errors import ConfigurationError, PermanentSinkError
from trainbus.bus._events import Log, RunStarted
from trainbus.sinks._mlflow_api import name_problem
from trainbus.sinks.mlflow import MLflowSink

pytestmark = pytest.mark.mlflow


def _client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.url)


def _experiment() -> str:
    return f"trainbus-test-{uuid.uuid4().hex[:8]}"


async def test_full_run_reads_back_exactly(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """Through a real Bus, MLflow's client reads back every metric once, params, tags,
    checkpoint artifacts and the final status."""
    events = scripted_run(30, eval_every=10, checkpoint=fake_checkpoint(tmp_path))
    name = _experiment()
    run_dir = tmp_path / "trainbus" / "run"  # the layout: the checkpoint is in its output_dir
    sink = MLflowSink(
        mlflow_server.url,
        run_dir=run_dir,
        experiment_name=name,
        tags={"team": "search"},
        log_artifacts=True,
    )
    with anyio.fail_after(60):
        report = await deliver_through_bus(events, [sink], run_dir)
    assert report["mlflow"].undelivered == 0 and report["mlflow"].skipped == 0
    client = _client(mlflow_server)
    run = client.get_run(sink.run_id)
    assert client.get_experiment(run.info.experiment_id).name == name
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-run"
    assert metric_history(client, run.info.run_id, "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 31)
    ]
    assert metric_history(client, run.info.run_id, "eval_accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (10, 20, 30)
    ]
    assert len(client.get_metric_history(run.info.run_id, "epoch")) == 33
    params = run.data.params
    assert params["learning_rate"] == "0.001"
    assert params["hidden_size"] == "16"
    assert params["hub_token"] == "***"
    assert params["optim_args"] == "{'betas': [0.9, 0.99]}"  # str(), as mlflow.log_params
    assert run.data.tags["team"] == "search"
    assert run.data.tags["trainbus.run_id"] == "run-1"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"  # mlflow.start_run's tags, over REST
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint-30")}
    assert files == {"checkpoint-30/model.safetensors", "checkpoint-30/sub"}
    nested = client.list_artifacts(run.info.run_id, "checkpoint-30/sub")
    assert [a.path for a in nested] == ["checkpoint-30/sub/trainer_state.json"]
    saved = json.loads((run_dir / "mlflow.json").read_text())
    assert saved["run_id"] == run.info.run_id


@pytest.mark.slow
async def test_checkpoints_reach_a_store_the_server_does_not_proxy(tmp_path: Path) -> None:
    """A server without proxied artifacts hands out a plain path as the run's artifact URI: the
    sink writes the checkpoint there through MLflow's artifact repository, as MLflow's client
    does, and the client lists it through the server."""
    with MlflowServer(tmp_path / "server", proxy_artifacts=False) as server:
        run_dir = tmp_path / "trainbus" / "run"
        events = scripted_run(3, checkpoint=fake_checkpoint(tmp_path))
        sink = MLflowSink(server.url, run_dir=run_dir, log_artifacts=True)
        with anyio.fail_after(60):
            report = await deliver_through_bus(events, [sink], run_dir)
        assert report["mlflow"].undelivered == 0
        client = _client(server)
        artifact_uri = client.get_run(sink.run_id).info.artifact_uri
        assert artifact_uri.startswith(str(server.artifacts_dir))
        files = {a.path for a in client.list_artifacts(sink.run_id, "checkpoint-30")}
        assert files == {"checkpoint-30/model.safetensors", "checkpoint-30/sub"}
        saved = Path(artifact_uri) / "checkpoint-30" / "sub" / "trainer_state.json"
        assert saved.read_text() == '{"global_step": 30}'


async def test_replay_after_restart_resumes_the_run_without_duplicates(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A new sink on the same run directory resumes the saved run, and re-sent batches add
    no points (MLflow ignores byte-identical points; the sink uses event time as timestamp)."""
    events = scripted_run(12, eval_every=4, status="failed")
    run_ids = []
    for attempt in range(2):
        sink = MLflowSink(mlflow_server.url, run_dir=tmp_path, experiment_name=_experiment())
        with anyio.fail_after(30):
            await sink.open()
            await sink.write(events[:8])
            await sink.write(events)  # a retry of an overlapping batch in the same process
            await sink.close()
        run_ids.append(sink.run_id)
        if attempt == 0:
            first_experiment = sink._state["experiment_id"]
    assert run_ids[0] == run_ids[1]
    client = _client(mlflow_server)
    run = client.get_run(run_ids[0])
    assert run.info.experiment_id == first_experiment
    assert run.info.status == "FAILED"
    assert [s for s, _ in metric_history(client, run_ids[0], "loss")] == list(range(1, 13))
    assert [s for s, _ in metric_history(client, run_ids[0], "eval_loss")] == [4, 8, 12]


async def test_run_is_found_by_tag_when_the_state_file_is_lost(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Without mlflow.json the run is found again by its trainbus.run_id tag, not duplicated."""
    name = _experiment()
    events = scripted_run(3, run_id=f"bus-{uuid.uuid4().hex[:6]}")
    ids = []
    for directory in ("a", "b"):
        sink = MLflowSink(mlflow_server.url, run_dir=tmp_path / directory, experiment_name=name)
        with anyio.fail_after(30):
            await sink.open()
            await sink.write(events)
            await sink.close()
        ids.append(sink.run_id)
    assert ids[0] == ids[1]
    assert len(metric_history(_client(mlflow_server), ids[0], "loss")) == 3


async def test_faults_between_sink_and_server_lose_and_duplicate_nothing(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Behind 200 ms of added latency, bursts of 500s, 429 with Retry-After and the server
    stopped for 3 s and restarted, publishing never waits and every metric lands exactly once."""
    events = scripted_run(150, eval_every=50)
    head, tail = events[:60], events[60:]
    with FaultProxy(mlflow_server.url, latency=0.2) as proxy:
        sink = MLflowSink(proxy.url, run_dir=tmp_path, experiment_name=_experiment())
        proxy.fail_next(3)
        proxy.throttle_next(2, retry_after=0.3)
        bus = Bus(
            run_id=events[0].run_id,
            journal_path=tmp_path / "journal.tbj",
            cursor_dir=tmp_path / "cursors",
            sinks=[sink],
            close_deadline=90,
            retry_policy=FAST_RETRY,
        )
        try:
            with anyio.fail_after(120):
                async with bus:
                    for event in head:
                        bus.publish(event)
                    while bus.stats()["mlflow"].delivered == 0:
                        await anyio.sleep(0.05)
                    await anyio.to_thread.run_sync(mlflow_server.stop)
                    for event in tail:
                        bus.publish(event)  # returns at once: the server is down right now
                    published_while_down = not mlflow_server.running
                    await anyio.sleep(3)
                    await anyio.to_thread.run_sync(mlflow_server.start)
        finally:
            if not mlflow_server.running:
                mlflow_server.start()
    assert published_while_down
    assert bus.report is not None and bus.report["mlflow"].undelivered == 0
    assert proxy.stats.injected == {500: 3, 429: 2}
    client = _client(mlflow_server)
    assert metric_history(client, sink.run_id, "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 151)
    ]
    assert [s for s, _ in metric_history(client, sink.run_id, "eval_loss")] == [50, 100, 150]
    assert client.get_run(sink.run_id).info.status == "FINISHED"


async def test_nested_run_and_resumed_run(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """MLFLOW_NESTED_RUN creates a child of MLFLOW_RUN_ID; MLFLOW_RUN_ID alone resumes it and
    sets MLFLOW_TAGS on it."""
    client = _client(mlflow_server)
    experiment_id = client.create_experiment(_experiment())
    parent = client.create_run(experiment_id, run_name="parent").info.run_id
    log_event = Log(run_id="r", seq=1, time=T0, global_step=5, logs={"loss": 0.25})
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_RUN_ID": parent}
    nested = MLflowSink.from_env(
        {**env, "MLFLOW_NESTED_RUN": "true"}, run_dir=tmp_path / "n", run_name="child"
    )
    resumed = MLflowSink.from_env(
        {**env, "MLFLOW_TAGS": '{"stage": "resumed"}'}, run_dir=tmp_path / "r", run_name="again"
    )
    with anyio.fail_after(30):
        for sink in (nested, resumed):
            await sink.open()
            await sink.write([scripted_run(1)[0], log_event])
            await sink.close()
    assert resumed.run_id == parent
    assert client.get_run(parent).data.tags["stage"] == "resumed"
    child = client.get_run(nested.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.experiment_id == "0"
    assert metric_history(client, parent, "loss") == [(5, 0.25)]


async def test_param_limits_and_conflicts_never_cost_metrics(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Over-long params are dropped, MLFLOW_MAX_LOG_PARAMS truncates, flattening works, and a
    param the resumed run already holds with another value is reported, not fatal."""
    events = scripted_run(2)
    started = events[0]
    assert isinstance(started, RunStarted)
    long_config = {**started.config, "id2label": "x" * 7000, "nested": {"a": 1, "b": 2}}
    events[0] = type(started)(**{**_fields(started), "config": long_config})
    sink = MLflowSink(
        mlflow_server.url, run_dir=tmp_path / "a", flatten_params=True, max_log_params=100
    )
    with anyio.fail_after(30):
        await sink.open()
        await sink.write(events)
        await sink.close()
    client = _client(mlflow_server)
    params = client.get_run(sink.run_id).data.params
    assert "id2label" not in params and sink.dropped_params == 1
    assert params["nested.a"] == "1" and params["optim_args.betas"] == "[0.9, 0.99]"

    changed = dict(long_config, learning_rate=0.5)
    events[0] = type(started)(**{**_fields(started), "config": changed})
    again = MLflowSink(mlflow_server.url, run_dir=tmp_path / "b", run_id=sink.run_id)
    later = [Log(run_id="run-1", seq=100, time=T0 + 50, global_step=3, logs={"loss": 0.1})]
    with anyio.fail_after(30):
        await again.open()
        await again.write([events[0], *later])
        await again.close()
    assert again.dropped_params > 0
    assert (3, 0.1) in metric_history(client, sink.run_id, "loss")


def _fields(event: Any) -> dict[str, Any]:
    return {f: getattr(event, f) for f in event.__struct_fields__}


def test_from_env_validates_each_variable(tmp_path: Path) -> None:
    """Bad values raise ConfigurationError naming the variable; an http(s) URI goes over REST,
    any other (or none) through the mlflow client; "all" needs a URI."""
    base = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    kwargs: dict[str, Any] = {"run_dir": tmp_path, "run_name": "r"}
    assert not MLflowSink.from_env(base, **kwargs).uses_client  # http(s): REST
    for uri in ("file:///tmp/mlruns", "sqlite:///m.db", "databricks", "databricks://p"):
        assert MLflowSink.from_env({"MLFLOW_TRACKING_URI": uri}, **kwargs).uses_client
    assert MLflowSink.from_env({}, **kwargs).uses_client  # MLflow's default store
    with pytest.raises(ConfigurationError, match="MLFLOW_TAGS"):
        MLflowSink.from_env({**base, "MLFLOW_TAGS": "[1, 2]"}, **kwargs)
    with pytest.raises(ConfigurationError, match="DISABLE_MLFLOW_INTEGRATION"):
        MLflowSink.from_env({**base, "DISABLE_MLFLOW_INTEGRATION": "TRUE"}, **kwargs)
    with pytest.raises(ConfigurationError, match="MLFLOW_RUN_ID"):
        MLflowSink.from_env({**base, "MLFLOW_NESTED_RUN": "1"}, **kwargs)
    with pytest.raises(ConfigurationError, match="MLFLOW_TRACKING_SERVER_CERT_PATH"):
        MLflowSink.from_env({**base, "MLFLOW_TRACKING_SERVER_CERT_PATH": "/nope.pem"}, **kwargs)
    sink = MLflowSink.from_env(
        {**base, "MLFLOW_TAGS": '{"a": "b", "n": 1}', "MLFLOW_TRACKING_INSECURE_TLS": "1"},
        **kwargs,
    )
    assert sink.tags == {"a": "b", "n": "1"}
    assert MLflowSink.is_available(base)
    assert not MLflowSink.is_available({**base, "DISABLE_MLFLOW_INTEGRATION": "true"})
    assert not MLflowSink.is_available({})


async def test_credentials_are_sent_and_never_logged(tmp_path: Path) -> None:
    """Token and basic auth reach the server as headers; logs show the URI without password."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("runs/get"):
            info = {"run_id": "abc", "experiment_id": "1", "artifact_uri": "", "status": "RUNNING"}
            return httpx.Response(200, json={"run": {"info": info}})
        return httpx.Response(200, json={})

    event = Log(run_id="r", seq=1, time=T0, global_step=1, logs={"loss": 1.0})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"token": "tok123"}, "Bearer tok123"),
        ({"username": "ann", "password": "pw9"}, "Basic " + base64.b64encode(b"ann:pw9").decode()),
    ]
    for auth, expected in cases:
        sink = MLflowSink(
            "http://ann:pw9@127.0.0.1:1",
            run_dir=tmp_path,
            run_id="abc",
            transport=httpx.MockTransport(handler),
            **auth,
        )
        with capture_logs() as logs, anyio.fail_after(10):
            await sink.open()
            await sink.write([event])
            await sink.close()
        assert seen[-1].headers["Authorization"] == expected
        assert "pw9" not in repr(logs)
        assert any("ann:***@" in str(entry.get("tracking_uri")) for entry in logs)


_LONG_KEY = "k" * 251
_BAD_KEYS = ("a/../b", _LONG_KEY)


def _poisoned_run(steps: int) -> list[Any]:
    """The scripted run, with two names MLflow refuses and NaN/inf values in every train log,
    and a param name it refuses in the config."""
    events = scripted_run(steps, eval_every=5)
    started = events[0]
    assert isinstance(started, RunStarted)
    config = {**started.config, "x/../y": 1}
    events[0] = type(started)(**{**_fields(started), "config": config})
    for index, event in enumerate(events):
        if isinstance(event, Log) and "loss" in event.logs:
            step = event.global_step
            logs = {**event.logs, "a/../b": step, _LONG_KEY: 1.0}
            logs.update(nan_metric=math.nan, inf_metric=math.inf if step % 2 else -math.inf)
            events[index] = type(event)(**{**_fields(event), "logs": logs})
    return events


def _assert_every_valid_point_once(client: Any, run_id: str | None, steps: int) -> None:
    """MLflow's own history holds each valid point exactly once, NaN and infinities included."""
    assert metric_history(client, run_id, "loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, steps + 1)
    ]
    assert [s for s, _ in metric_history(client, run_id, "learning_rate")] == list(
        range(1, steps + 1)
    )
    assert [s for s, _ in metric_history(client, run_id, "eval_loss")] == list(
        range(5, steps + 1, 5)
    )
    assert len(client.get_metric_history(run_id, "epoch")) == steps + steps // 5
    nans = metric_history(client, run_id, "nan_metric")
    assert [s for s, _ in nans] == list(range(1, steps + 1))
    assert all(math.isnan(v) for _, v in nans)
    infs = metric_history(client, run_id, "inf_metric")
    assert [s for s, _ in infs] == list(range(1, steps + 1))
    assert all(abs(v) >= 1.7e308 and (v > 0) == (s % 2 == 1) for s, v in infs)
    run = client.get_run(run_id)
    assert set(run.data.metrics).isdisjoint(_BAD_KEYS)
    assert run.data.params["learning_rate"] == "0.001" and "x/../y" not in run.data.params


async def test_invalid_names_are_quarantined_and_every_valid_point_arrives_once(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Names MLflow refuses (``a/../b``, 251 characters, a ``..`` param) are held back before
    sending and reported; every other point, NaN and infinities included, arrives exactly once."""
    steps = 10
    sink = MLflowSink(mlflow_server.url, run_dir=tmp_path / "run", experiment_name=_experiment())
    with anyio.fail_after(60):
        report = (await deliver_through_bus(_poisoned_run(steps), [sink], tmp_path / "run"))[
            "mlflow"
        ]
    _assert_every_valid_point_once(_client(mlflow_server), sink.run_id, steps)
    assert report.undelivered == 0 and report.skipped == 0
    assert report.quarantined == 2 * steps + 1
    named = {(p.key, p.reason.split(" ")[0]) for p in report.quarantined_points}
    assert named == {("a/../b", "name"), (_LONG_KEY, "name"), ("x/../y", "param")}
    saved = json.loads((tmp_path / "run" / "cursors" / "mlflow.quarantine.json").read_text())
    assert saved["count"] == 2 * steps + 1


async def test_a_batch_the_server_refuses_is_narrowed_to_the_refused_points(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the sink's own name check switched off (as for a rule the sink does not know yet),
    the server answers 400 and the runtime splits the batch, down to one request per metric of
    an event: only the refused points are quarantined, every valid one arrives exactly once."""
    monkeypatch.setattr("trainbus.sinks.mlflow._name_problem", lambda name: None)
    steps = 6
    sink = MLflowSink(mlflow_server.url, run_dir=tmp_path / "run", experiment_name=_experiment())
    events = _poisoned_run(steps)
    with anyio.fail_after(120):
        report = (await deliver_through_bus(events, [sink], tmp_path / "run"))["mlflow"]
    _assert_every_valid_point_once(_client(mlflow_server), sink.run_id, steps)
    assert report.undelivered == 0 and report.skipped == 2 * steps
    quarantined = {(p.seq, p.key) for p in report.quarantined_points}
    train_logs_seqs = [e.seq for e in events if isinstance(e, Log) and "loss" in e.logs]
    expected = {(seq, key) for seq in train_logs_seqs for key in _BAD_KEYS}
    assert quarantined == expected | {(0, "x/../y")}  # params are still checked before sending


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("train/loss", None),
        ("eval accuracy: top-1.x", None),
        ("k" * 250, None),
        ("k" * 251, "longer"),
        ("a/../b", "path"),
        ("../a", "path"),
        ("/a", "path"),
        ("a/", "path"),
        ("a//b", "path"),
        ("./a", "path"),
        (".", "path"),
        ("", "path"),
        ("acc@1", "characters"),
        ("a\nb", "characters"),
    ],
)
def test_names_are_checked_against_mlflows_rules(name: str, problem: str | None) -> None:
    """Names MLflow's server refuses (length, characters, paths that normalise to another name)
    are found before sending; names it accepts pass."""
    found = name_problem(name)
    assert found is None if problem is None else problem in (found or "")


def test_bad_tag_names_and_run_level_refusals(tmp_path: Path) -> None:
    """A tag name MLflow refuses is a one-line configuration error naming MLFLOW_TAGS; a refusal
    about the run or the credentials is never split, one about the points is."""
    base = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    with pytest.raises(ConfigurationError, match=r"MLFLOW_TAGS .*'a/\.\./b'"):
        MLflowSink.from_env(
            {**base, "MLFLOW_TAGS": '{"a/../b": "x"}'}, run_dir=tmp_path, run_name=""
        )
    sink = MLflowSink(base["MLFLOW_TRACKING_URI"], run_dir=tmp_path)
    log = Log(run_id="r", seq=3, time=T0, global_step=1, logs={"loss": 1.0, "acc": 0.5, "s": "x"})
    invalid_state = PermanentSinkError("x", status=400, body='{"error_code": "INVALID_STATE"}')
    assert sink.split([log], invalid_state) == ()
    assert sink.split([log, log], PermanentSinkError("forbidden", status=403)) == ()
    bad_value = PermanentSinkError(
        "x", status=400, body='{"error_code": "INVALID_PARAMETER_VALUE"}'
    )
    parts = sink.split([log], bad_value)
    assert [[dict(e.logs) for e in part] for part in parts] == [[{"loss": 1.0}], [{"acc": 0.5}]]
    assert [len(part) for part in sink.split([log] * 5, bad_value)] == [2, 3]
