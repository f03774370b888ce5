"""Comet sink: the real ``comet_ml`` SDK, online against a local fake server and offline for real.

No Comet server can run here, so online tests talk to ``tests.sinks.comet_fake.FakeComet``, which
speaks the SDK's protocol and checks every request against the SDK's own message classes.
Offline archives are read back with the SDK's own reader: ``comet upload``'s ``OfflineSender``,
with its schema validation made strict, sending them to the fake.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.sinks.comet_fake import FakeComet, FakeExperiment
from tests.sinks.scripted import deliver_through_bus, eval_logs, scripted_run, train_logs
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Event, Log, Predict, RunFinished, RunStarted, TrainEnd
from trainbus.sinks.comet import CometSink, find_archives, offline_archives

pytest.importorskip("comet_ml")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own HOME and no Comet settings from the machine.

    The SDK finds the machine's IP address for its system details by opening a socket towards
    its server, by default www.comet.com, which has no address here: offline it would then
    write an address its own uploader refuses. A local server address keeps that lookup here.
    """
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in list(os.environ):
        if name.startswith("COMET_") and name != "COMET_DISABLE_AUTO_LOGGING":
            monkeypatch.delenv(name)
    monkeypatch.setenv("COMET_URL_OVERRIDE", "http://127.0.0.1:9/clientlib/")
    yield


def _online(comet: FakeComet, monkeypatch: pytest.MonkeyPatch, **extra: str) -> dict[str, str]:
    # The SDK reads its server from the process environment: monkeypatch restores it.
    monkeypatch.setenv("COMET_URL_OVERRIDE", comet.url)
    return {
        "COMET_API_KEY": comet.api_key,
        "COMET_URL_OVERRIDE": comet.url,
        "COMET_WORKSPACE": "ws",
        "COMET_PROJECT_NAME": "proj",
        **extra,
    }


def read_archives(
    archives: Sequence[Path], comet: FakeComet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read offline archives as ``comet upload`` does (the SDK's ``OfflineSender``), in order,
    into ``comet``; fails on any message the SDK's schemas refuse or it cannot process."""
    from comet_ml.offline import OfflineSender, unzip_offline_archive

    class StrictSender(OfflineSender):  # type: ignore[misc]
        # The uploader reports a bad message to the server and goes on; here it is a failure.
        def _report_experiment_error(self, message: str) -> None:
            errors.append(f"{archive.name}: {message}")

    monkeypatch.setenv("COMET_URL_OVERRIDE", comet.url)
    assert archives
    errors: list[str] = []
    for archive in archives:
        sender = StrictSender(
            api_key=comet.api_key,
            offline_dir=unzip_offline_archive(str(archive)),
            raise_validation_error_for_tests=True,
        )
        sender.send()
        sender.close()
    assert errors == [], "\n".join(errors)


def _points(experiment: FakeExperiment, name: str) -> list[tuple[int, float]]:
    return sorted(
        (m["step"], m["metricValue"]) for m in experiment.metrics if m["metricName"] == name
    )


def _segment(run_id: str, first_seq: int, kind: type[Event], step: int) -> list[Event]:
    """A later evaluate()/predict() on the same run: RunStarted again, one result, RunFinished."""
    fields: dict[str, Any] = {"run_id": run_id, "time": 1.0, "global_step": step, "epoch": 1.0}
    started = RunStarted(
        seq=first_seq, run_name="tiny-run", config={"learning_rate": 9.0}, **fields
    )
    if kind is Predict:
        result: Event = Predict(seq=first_seq + 1, metrics={"test_loss": 0.25}, **fields)
    else:
        result = Log(seq=first_seq + 1, logs={"eval_loss": 0.5}, **fields)
    return [started, result, RunFinished(seq=first_seq + 2, **fields)]


async def test_online_run_delivers_metrics_params_and_system_details(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real Bus, every value arrives once under transformers' names at its step and
    epoch; params are the nested arguments and model config with secrets masked; the SDK's
    system details and installed packages come along; the fake refused nothing."""
    events = scripted_run(10, eval_every=5)
    with FakeComet() as comet:
        sink = CometSink.from_env(_online(comet, monkeypatch), run_dir=tmp_path, run_name="tiny")
        with anyio.fail_after(60):
            report = await deliver_through_bus(events, [sink], tmp_path)
    assert report["comet_ml"].undelivered == 0
    assert comet.rejected == []
    experiment = comet.only()
    assert (experiment.workspace, experiment.project, experiment.name) == ("ws", "proj", "tiny")
    assert _points(experiment, "train/loss") == [
        (s, pytest.approx(train_logs(s)["loss"])) for s in range(1, 11)
    ]
    assert _points(experiment, "eval/loss") == [(s, pytest.approx(2.0 / s)) for s in (5, 10)]
    epochs = {m["step"]: m["epoch"] for m in experiment.metrics if m["metricName"] == "train/loss"}
    assert epochs == {s: pytest.approx(s / 10) for s in range(1, 11)}
    assert experiment.params["args|learning_rate"] == 0.001
    assert experiment.params["args|hub_token"] == "***"
    assert experiment.params["config|hidden_size"] == 16
    assert experiment.others["trainbus_status"] == "completed"
    assert {"installedPackages", "hostname", "pythonVersion"} <= set(experiment.system)
    assert sink.experiment_key in comet.experiments


@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
async def test_train_evaluate_predict_make_one_experiment(
    online: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three segments of one run (train, evaluate, predict: a new sink each, one run directory)
    log into one experiment; params are sent once; predict's metrics are there."""
    train = scripted_run(4, eval_every=2)
    segments = [
        train,
        _segment("run-1", len(train), Log, 4),
        _segment("run-1", len(train) + 3, Predict, 4),
    ]
    with FakeComet() as comet:
        env = _online(comet, monkeypatch) if online else {"COMET_START_ONLINE": "0"}
        for events in segments:
            sink = CometSink.from_env(env, run_dir=tmp_path, run_name="tiny")
            with anyio.fail_after(60):
                await deliver_through_bus(events, [sink], tmp_path)
        if not online:
            archives = offline_archives(tmp_path / "comet")
            assert len(archives) == 3
            read_archives(archives, comet, monkeypatch)
    assert comet.rejected == []
    experiment = comet.only()
    assert experiment.param_posts.count("args|learning_rate") == 1
    assert experiment.params["args|learning_rate"] == 0.001
    assert _points(experiment, "test/loss") == [(4, 0.25)]
    assert [s for s, _ in _points(experiment, "eval/loss")] == [2, 4, 4]
    assert len(_points(experiment, "train/loss")) == 4


async def test_replayed_events_are_not_logged_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch delivered again (a retry, or a new sink replaying the journal) adds nothing."""
    events = scripted_run(6, eval_every=100)
    with FakeComet() as comet:
        env = _online(comet, monkeypatch)
        for _ in range(2):
            sink = CometSink.from_env(env, run_dir=tmp_path, run_name="r")
            with anyio.fail_after(60):
                await sink.open()
                await sink.write(events[:4])
                await sink.write(events)
                await sink.close()
    assert comet.rejected == []
    names = [(m["metricName"], m["step"]) for m in comet.only().metrics]
    assert len(names) == len(set(names)) == 6 * 3


async def test_offline_archive_reads_back_with_the_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMET_START_ONLINE=0 writes one archive that the SDK's uploader accepts (every message
    valid under its schemas), with every metric at its step and epoch, and the params."""
    events = scripted_run(8, eval_every=4)
    env = {"COMET_START_ONLINE": "0", "COMET_OFFLINE_DIRECTORY": str(tmp_path / "archives")}
    assert CometSink.is_available(env)
    sink = CometSink.from_env(env, run_dir=tmp_path / "run", run_name="offline")
    with anyio.fail_after(60):
        await deliver_through_bus(events, [sink], tmp_path / "run")
    archives = offline_archives(tmp_path / "archives")
    assert [a.name.partition("-")[0].removesuffix(".zip") for a in archives] == [
        sink.experiment_key
    ]
    with FakeComet() as comet:
        read_archives(archives, comet, monkeypatch)
    assert comet.rejected == []
    experiment = comet.experiments[sink.experiment_key or ""]
    assert experiment.offline and experiment.name == "offline"
    assert _points(experiment, "eval/accuracy") == [
        (s, pytest.approx(eval_logs(s)["eval_accuracy"])) for s in (4, 8)
    ]
    assert len(experiment.metrics) == 8 * 3 + 2 * 3
    assert experiment.params["config|model_type"] == "tiny"
    assert "installedPackages" in experiment.system


async def test_log_assets_uploads_the_output_dir_at_train_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMET_LOG_ASSETS=1 uploads every file under output_dir when training ends, named as the
    SDK's ``log_asset_folder`` names them, but not trainbus's run directory; without it, none."""
    output = tmp_path / "out"
    (output / "checkpoint-2").mkdir(parents=True)
    (output / "checkpoint-2" / "model.safetensors").write_bytes(b"w" * 64)
    (output / "config.json").write_text("{}")
    common: dict[str, Any] = {"run_id": "r", "time": 1.0}
    events: list[Event] = [
        RunStarted(seq=0, output_dir=str(output), **common),
        Log(seq=1, global_step=2, logs={"loss": 0.5}, **common),
        TrainEnd(seq=2, global_step=2, **common),
        RunFinished(seq=3, global_step=2, **common),
    ]
    uploaded = []
    for flag in ("1", "0"):
        with FakeComet() as comet:
            env = _online(comet, monkeypatch, COMET_LOG_ASSETS=flag)
            run_dir = output / "trainbus" / flag
            sink = CometSink.from_env(env, run_dir=run_dir, run_name="r")
            with anyio.fail_after(60):
                await deliver_through_bus(events, [sink], run_dir)
        assert comet.rejected == []
        uploaded.append(comet.only().assets)
    assert uploaded[0] == {
        "out/checkpoint-2/model.safetensors": b"w" * 64,
        "out/config.json": b"{}",
    }
    assert uploaded[1] == {}


async def test_trainbus_comet_upload_sends_a_runs_archives_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trainbus comet-upload RUN_DIR`` uploads the run's archives oldest first with the SDK's
    uploader (the experiment is created, then continued); a path without archives is one line
    on stderr and exit status 2."""
    for events in (scripted_run(4, eval_every=2), _segment("run-1", 100, Predict, 4)):
        sink = CometSink.from_env({"COMET_START_ONLINE": "0"}, run_dir=tmp_path, run_name="r")
        with anyio.fail_after(60):
            await deliver_through_bus(events, [sink], tmp_path)
    assert len(find_archives(tmp_path)) == 2
    with FakeComet() as comet:
        env = {**os.environ, "COMET_API_KEY": comet.api_key, "COMET_URL_OVERRIDE": comet.url}
        command = [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "comet-upload"]
        with anyio.fail_after(120):
            done = await anyio.run_process([*command, str(tmp_path)], env=env, check=False)
            missing = await anyio.run_process(
                [*command, str(tmp_path / "home")], env=env, check=False
            )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().count("uploaded ") == 2
    assert comet.rejected == []
    experiment = comet.only()
    assert len(_points(experiment, "train/loss")) == 4
    assert _points(experiment, "test/loss") == [(4, 0.25)]
    assert missing.returncode == 2
    assert missing.stderr.decode().count("\n") == 1
    assert "no Comet offline archive" in missing.stderr.decode()


def test_from_env_validates_each_variable(tmp_path: Path) -> None:
    """Bad or missing settings raise ConfigurationError naming the variable; online without an
    API key fails before training, as the SDK would at start."""
    kwargs: dict[str, Any] = {"run_dir": tmp_path, "run_name": "r"}
    with pytest.raises(ConfigurationError, match="COMET_API_KEY"):
        CometSink.from_env({"COMET_WORKSPACE": "w"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_MODE"):
        CometSink.from_env({"COMET_API_KEY": "k", "COMET_MODE": "sometimes"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_EXPERIMENT_KEY"):
        CometSink.from_env({"COMET_API_KEY": "k", "COMET_MODE": "get"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_START_ONLINE"):
        CometSink.from_env({"COMET_START_ONLINE": "perhaps"}, **kwargs)
    with pytest.raises(ConfigurationError, match="COMET_LOG_ASSETS"):
        CometSink.from_env({"COMET_API_KEY": "k", "COMET_LOG_ASSETS": "maybe"}, **kwargs)
    offline = CometSink.from_env({"COMET_START_ONLINE": "false"}, **kwargs)
    assert not offline.online and offline.offline_directory == tmp_path / "comet"
    assert CometSink.is_available({"COMET_API_KEY": "k"})
    assert CometSink.is_available({"COMET_START_ONLINE": "0"})
    assert not CometSink.is_available({"COMET_MODE": "create"})
    assert not CometSink.is_available({})


async def test_unknown_experiment_key_in_get_mode_is_permanent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMET_MODE=get with a key the server does not know disables the sink (no retry loop)."""
    from trainbus.bus._errors import PermanentSinkError

    with FakeComet() as comet:
        env = _online(comet, monkeypatch, COMET_MODE="get", COMET_EXPERIMENT_KEY="f" * 32)
        sink = CometSink.from_env(env, run_dir=tmp_path, run_name="r")
        with anyio.fail_after(60), pytest.raises(PermanentSinkError, match="Comet refused"):
            await sink.open()
    assert comet.experiments == {}


async def test_importing_the_sink_turns_comet_auto_logging_off() -> None:
    """Importing the sink (which choosing it does, before comet_ml is imported) sets
    COMET_DISABLE_AUTO_LOGGING=1 when the user did not set it, so comet_ml patches nothing."""
    code = (
        "import trainbus.sinks.comet, comet_ml; "
        "print(comet_ml.config.get_config('comet.disable_auto_logging'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "COMET_DISABLE_AUTO_LOGGING"}
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["1"]
