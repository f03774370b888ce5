"""Comet sink, online against a local fake of Comet's REST API v2 and offline for real.

No Comet server can run in the test environment, so the online tests talk to
``tests.sinks.comet_fake.FakeComet``: a small local HTTP server implementing only the endpoints
the sink uses, validating every request against Comet's documented write API (header, exact
fields, types, known experiment key). Offline mode needs no server and is tested end to end,
including the later upload.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.sinks.comet_fake import FakeComet
from tests.sinks.scripted import T0, deliver_through_bus, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._events import Log
from trainbus.sinks._comet_api import rest_base
from trainbus.sinks.comet import OFFLINE_KEY, CometSink, upload_offline


def _env(comet: FakeComet, **extra: str) -> dict[str, str]:
    return {
        "COMET_API_KEY": comet.api_key,
        "COMET_URL_OVERRIDE": comet.url,
        "COMET_WORKSPACE": "ws",
        "COMET_PROJECT_NAME": "proj",
        **extra,
    }


async def test_online_run_logs_metrics_params_status_and_assets(tmp_path: Path) -> None:
    """Through a real Bus, every metric arrives once with HF prefixes, step, epoch and time;
    params are flattened args/config without secrets; status, end time and assets follow."""
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"w" * 100)
    events = scripted_run(10, eval_every=5, checkpoint=checkpoint)
    run_dir = tmp_path / "trainbus" / "run"
    with FakeComet() as comet:
        env = _env(comet, COMET_LOG_ASSETS="true")
        # the layout: the checkpoint is in the run's output_dir
        sink = CometSink.from_env(env, run_dir=run_dir, run_name="fallback")
        with anyio.fail_after(30):
            report = await deliver_through_bus(events, [sink], run_dir)
    assert report["comet_ml"].undelivered == 0 and report["comet_ml"].skipped == 0
    assert comet.rejected == []
    experiment = comet.experiments[sink.experiment_key or ""]
    assert (experiment.workspace, experiment.project, experiment.name) == ("ws", "proj", "tiny-run")
    losses = sorted(
        (m["step"], m["metricValue"]) for m in experiment.metrics if m["metricName"] == "train/loss"
    )
    assert losses == [(s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 11)]
    eval_points = [m for m in experiment.metrics if m["metricName"] == "eval/loss"]
    assert sorted(m["step"] for m in eval_points) == [5, 10]
    assert all(m["timestamp"] >= T0 * 1000 and m["epoch"] > 0 for m in experiment.metrics)
    assert experiment.params["args.learning_rate"] == "0.001"
    assert experiment.params["args.hub_token"] == "***"
    assert experiment.params["config.hidden_size"] == "16"
    assert experiment.others["trainbus_status"] == "completed"
    assert set(experiment.times) == {"startTimeMillis", "endTimeMillis"}
    assert experiment.tags == ["trainbus"]
    assert experiment.assets == {"checkpoint-10/weights.bin": b"w" * 100}


async def test_retried_batch_sends_each_point_once(tmp_path: Path) -> None:
    """When some requests of a batch fail, the retry sends only what was not acknowledged."""
    events = scripted_run(6, eval_every=100)
    with FakeComet() as comet:
        sink = CometSink.from_env(_env(comet), run_dir=tmp_path, run_name="r")
        comet.fail_requests = {5, 9, 12}
        with anyio.fail_after(30):
            await sink.open()
            for _ in range(5):
                try:
                    await sink.write(events)
                    break
                except RetryableSinkError:
                    continue
            await sink.close()
    experiment = comet.experiments[sink.experiment_key or ""]
    names = [(m["metricName"], m["step"]) for m in experiment.metrics]
    assert len(names) == len(set(names)) == 6 * 3
    assert comet.rejected == []


async def test_modes_get_and_get_or_create(tmp_path: Path) -> None:
    """COMET_MODE=get resumes a known key and refuses an unknown one; the saved key is reused."""
    first = scripted_run(1)
    with FakeComet() as comet:
        created = CometSink.from_env(_env(comet), run_dir=tmp_path / "a", run_name="r")
        unknown = CometSink.from_env(
            _env(comet, COMET_MODE="get", COMET_EXPERIMENT_KEY="f" * 32),
            run_dir=tmp_path / "b",
            run_name="r",
        )
        with anyio.fail_after(30):
            await created.open()
            await created.write(first)
            await created.close()
            resumed = CometSink.from_env(
                _env(comet, COMET_MODE="get", COMET_EXPERIMENT_KEY=created.experiment_key or ""),
                run_dir=tmp_path / "c",
                run_name="r",
            )
            again = CometSink.from_env(_env(comet), run_dir=tmp_path / "a", run_name="r")
            for sink in (resumed, again):
                await sink.open()
                await sink.write(first)
                await sink.close()
            await unknown.open()
            with pytest.raises(PermanentSinkError, match="COMET_EXPERIMENT_KEY"):
                await unknown.write(first)
            await unknown.close()
    assert resumed.experiment_key == again.experiment_key == created.experiment_key
    assert len(comet.experiments) == 1


async def test_offline_mode_keeps_everything_locally_then_uploads(tmp_path: Path) -> None:
    """COMET_START_ONLINE=0 writes each request to comet-offline.jsonl (a replayed batch is not
    written twice); upload_offline later replays it into a new experiment."""
    events = scripted_run(8, eval_every=4)
    env = {"COMET_START_ONLINE": "0"}
    assert CometSink.is_available(env)
    for _ in range(2):  # the second sink replays the same journal after a "restart"
        sink = CometSink.from_env(env, run_dir=tmp_path, run_name="offline")
        with anyio.fail_after(10):
            await sink.open()
            await sink.write(events[:5])
            await sink.write(events)
            await sink.close()
    lines = [json.loads(line) for line in sink.offline_path.read_text().splitlines()]
    metric_lines = [x for x in lines if x.get("endpoint") == "write/experiment/metric"]
    assert len(metric_lines) == 8 * 3 + 2 * 3
    with FakeComet() as comet:
        with anyio.fail_after(30):
            key = await upload_offline(sink.offline_path, _env(comet))
    assert comet.rejected == []
    experiment = comet.experiments[key]
    assert len(experiment.metrics) == len(metric_lines)
    assert experiment.others["trainbus_status"] == "completed"


async def test_trainbus_comet_upload_replays_an_offline_run(tmp_path: Path) -> None:
    """``trainbus comet-upload`` sends an offline run directory's requests to the server in the
    environment and prints the experiment key; a path with no offline file is one line, exit 2."""
    events = scripted_run(4, eval_every=2)
    sink = CometSink.from_env({"COMET_START_ONLINE": "0"}, run_dir=tmp_path, run_name="offline")
    with anyio.fail_after(10):
        await sink.open()
        await sink.write(events)
        await sink.close()
    written = sink.offline_path.read_text().splitlines()
    with FakeComet() as comet:
        env = {**os.environ, **_env(comet)}
        command = [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "comet-upload"]
        with anyio.fail_after(120):
            done = await anyio.run_process([*command, str(tmp_path)], env=env, check=False)
            missing = await anyio.run_process(
                [*command, str(tmp_path / "nothing.jsonl")], env=env, check=False
            )
    assert done.returncode == 0, done.stderr.decode()
    key = done.stdout.decode().split()[-1]
    assert comet.rejected == []
    experiment = comet.experiments[key]
    metric_lines = [line for line in written if '"write/experiment/metric"' in line]
    assert len(experiment.metrics) == len(metric_lines) > 0
    assert experiment.others["trainbus_status"] == "completed"
    assert missing.returncode == 2
    assert missing.stderr.decode().count("\n") == 1
    assert "nothing.jsonl" in missing.stderr.decode() and missing.stdout == b""


async def test_offline_metric_lines_are_the_online_request_bodies(tmp_path: Path) -> None:
    """Offline metric lines (written from structs) hold exactly the body an online POST sends,
    in the same key order, for every point, NaN and infinities left out as online."""
    logs = {"loss": 0.5, "grad_norm": float("nan"), "learning_rate": 1e-4, "epoch": 0.25, "n": 3}
    event = Log(run_id="r", seq=7, time=1700000000.1234, global_step=12, epoch=0.25, logs=logs)
    sink = CometSink.from_env({"COMET_START_ONLINE": "0"}, run_dir=tmp_path, run_name="x")
    with anyio.fail_after(10):
        await sink.open()
        await sink.write([event])
        await sink.close()
    written = [json.loads(line) for line in sink.offline_path.read_text().splitlines()]
    online = [body for _, body in sink._requests(OFFLINE_KEY, event)]
    assert [line["body"] for line in written] == [body for _, body in online]
    assert [list(line["body"]) for line in written] == [list(body) for _, body in online]
    assert {line["seq"] for line in written} == {7}
    assert {line["endpoint"] for line in written} == {"write/experiment/metric"}
    names = [line["body"]["metricName"] for line in written]
    assert names == ["train/loss", "train/learning_rate", "train/epoch", "train/n"]


def test_from_env_validates_each_variable(tmp_path: Path) -> None:
    """Bad or missing settings raise ConfigurationError naming the variable."""
    kwargs: dict[str, Any] = {"run_dir": tmp_path, "run_name": "r"}
    with pytest.raises(ConfigurationError, match="COMET_API_KEY"):
        CometSink.from_env({"COMET_WORKSPACE": "w"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_MODE"):
        CometSink.from_env({"COMET_API_KEY": "k", "COMET_MODE": "sometimes"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_EXPERIMENT_KEY"):
        CometSink.from_env({"COMET_API_KEY": "k", "COMET_MODE": "get"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_WORKSPACE"):
        CometSink.from_env({"COMET_API_KEY": "k"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_START_ONLINE"):
        CometSink.from_env({"COMET_START_ONLINE": "perhaps"}, **kwargs)
    assert CometSink.is_available({"COMET_API_KEY": "k"})
    assert CometSink.is_available({"COMET_MODE": "create"})
    assert not CometSink.is_available({})


def test_rest_base_accepts_server_root_and_sdk_forms() -> None:
    """COMET_URL_OVERRIDE may be the server root or the SDK's /clientlib/ URL."""
    assert rest_base(None) == "https://www.comet.com/api/rest/v2"
    assert rest_base("https://comet.example.org/clientlib/") == (
        "https://comet.example.org/api/rest/v2"
    )
    assert rest_base("http://127.0.0.1:8080") == "http://127.0.0.1:8080/api/rest/v2"
