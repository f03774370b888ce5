"""Paths that come from run data never lead a sink out of the run's output directory.

TensorBoard's ``log_dir`` in ``tensorboard.json`` and ``RunStarted.output_dir``, DVCLive's metric
names (they become ``plots/metrics/<name>.tsv``) and ``Artifact`` events uploaded to MLflow are all
read back from a run directory by ``trainbus sync``, as is the ``output_dir`` the Comet sink
uploads with ``COMET_LOG_ASSETS``; each is confined or refused.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

from tests.sinks.scripted import T0, scripted_run
from tests.support.mlflow_server import MlflowServer
from trainbus.bus._errors import PermanentSinkError
from trainbus.bus._events import Artifact, Log, RunStarted, TrainEnd
from trainbus.sinks.comet import CometSink, offline_archives
from trainbus.sinks.dvclive import DVCLiveSink
from trainbus.sinks.mlflow import MLflowSink
from trainbus.sinks.tensorboard import TensorBoardSink


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


async def test_tensorboard_refuses_a_log_dir_outside_from_its_state_file(tmp_path: Path) -> None:
    """A ``tensorboard.json`` naming a directory outside the output directory is refused with a
    sentence naming the field, before anything is written there."""
    run_dir = tmp_path / "out" / "trainbus" / "run-1"
    run_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    (run_dir / "tensorboard.json").write_text(json.dumps({"log_dir": str(outside)}))
    sink = TensorBoardSink(run_dir=run_dir)
    with pytest.raises(PermanentSinkError, match=r"tensorboard\.json log_dir .* lies outside"):
        await sink.open()
    assert not outside.exists()


async def test_tensorboard_writes_under_the_layout_whatever_run_started_says(
    tmp_path: Path,
) -> None:
    """In the run-directory layout the default folder is ``<output_dir>/runs/...`` of the folder
    that holds the run, not the ``output_dir`` a crafted ``RunStarted`` names."""
    out = tmp_path / "out"
    run_dir = out / "trainbus" / "run-1"
    outside = tmp_path / "outside"
    events = scripted_run(3)
    started = events[0]
    assert isinstance(started, RunStarted)
    events[0] = msgspec.structs.replace(started, output_dir=str(outside))
    sink = TensorBoardSink(run_dir=run_dir)
    with anyio.fail_after(10):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert not outside.exists()
    assert len(list((out / "runs").iterdir())) == 1  # one TensorBoard folder, in the output dir


async def test_tensorboard_refuses_run_started_output_dir_outside_a_bare_run_dir(
    tmp_path: Path,
) -> None:
    """Outside the layout, ``RunStarted.output_dir`` must lie inside the run directory itself."""
    events = scripted_run(2)
    started = events[0]
    assert isinstance(started, RunStarted)
    events[0] = msgspec.structs.replace(started, output_dir=str(tmp_path / "outside"))
    sink = TensorBoardSink(run_dir=tmp_path / "run")
    await sink.open()
    with pytest.raises(PermanentSinkError, match=r"output_dir .* lies outside"):
        await sink.write(events)
    assert not (tmp_path / "outside").exists()


@pytest.fixture
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so DVCLive finds no repository of the checkout."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.usefixtures("_cwd")
async def test_dvclive_refuses_metric_names_that_would_leave_its_directory(
    tmp_path: Path,
) -> None:
    """Names whose TSV file would land outside ``plots/metrics`` (``../``, absolute) are dropped,
    counted and named once in a warning; the other metrics of the same events still land."""
    run_dir = tmp_path / "out" / "trainbus" / "run-1"
    hostile = {"../../../escape": 1.0, "eval_../../../../escape2": 2.0, "/abs/escape3": 3.0}
    events = [
        Log(run_id="r", seq=seq, time=T0, global_step=seq, logs={"loss": 0.5, **hostile})
        for seq in (1, 2)
    ]
    sink = DVCLiveSink(run_dir=run_dir)
    with capture_logs() as logs, anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    assert sink.dropped_values == 6
    refused = [e for e in logs if e["event"] == "dvclive metric refused, dropped"]
    assert len(refused) == 3
    assert all("metric name" in e["reason"] for e in refused)
    assert not [p for p in tmp_path.rglob("escape*")]
    assert _files(run_dir / "dvclive" / "plots" / "metrics") == ["loss.tsv"]


def _experiment() -> str:
    return f"trainbus-paths-{uuid.uuid4().hex[:8]}"


@pytest.mark.mlflow
async def test_mlflow_uploads_only_artifacts_inside_the_output_dir(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """With artifacts on, a checkpoint inside the output directory is uploaded; one outside, one
    holding a link to a file outside, and one whose name climbs (``../``) are refused and named
    in a warning, and the metrics still arrive."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    run_dir = out / "trainbus" / "run-1"
    secret = tmp_path / "secret.txt"
    secret.write_text("never upload me")
    good = out / "checkpoint-3"
    good.mkdir(parents=True)
    (good / "model.safetensors").write_bytes(b"\x00" * 64)
    linked = out / "checkpoint-4"
    linked.mkdir()
    (linked / "leak.txt").symlink_to(secret)
    events = scripted_run(4)
    finished = events.pop()
    last = events[-1]
    for path, name in ((good, "checkpoint-3"), (secret, ""), (linked, ""), (good, "../../x")):
        events.append(
            Artifact(
                run_id=last.run_id,
                seq=len(events),
                time=last.time,
                global_step=4,
                path=str(path),
                kind="checkpoint",
                name=name,
            )
        )
    events.append(msgspec.structs.replace(finished, seq=len(events)))
    sink = MLflowSink(
        mlflow_server.url, run_dir=run_dir, experiment_name=_experiment(), log_artifacts=True
    )
    with capture_logs() as logs, anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    refused = [e["reason"] for e in logs if e["event"] == "mlflow artifact refused, skipped"]
    assert len(refused) == 3
    assert "secret.txt" in refused[0] and "leak.txt" in refused[1] and "'../../x'" in refused[2]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    assert sink.run_id is not None
    assert [a.path for a in client.list_artifacts(sink.run_id)] == ["checkpoint-3"]
    assert [m.step for m in client.get_metric_history(sink.run_id, "loss")] == [1, 2, 3, 4]


async def test_comet_log_assets_refuses_an_output_dir_outside_the_run(tmp_path: Path) -> None:
    """With ``COMET_LOG_ASSETS``, the Comet sink uploads ``RunStarted.output_dir`` at train end:
    one that is not the run's output directory is refused by name and nothing is uploaded."""
    pytest.importorskip("comet_ml")
    run_dir = tmp_path / "out" / "trainbus" / "run-1"
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "secret.txt").write_text("never upload me")
    common = {"run_id": "r", "time": T0}
    events = [
        RunStarted(seq=0, output_dir=str(secret), **common),
        TrainEnd(seq=1, global_step=1, **common),
    ]
    sink = CometSink.from_env(
        {"COMET_START_ONLINE": "0", "COMET_LOG_ASSETS": "1"}, run_dir=run_dir, run_name="r"
    )
    with capture_logs() as logs, anyio.fail_after(60):
        await sink.open()
        await sink.write(events)
        await sink.close()
    (archive,) = offline_archives(run_dir / "comet")
    with zipfile.ZipFile(archive) as opened:
        assert b"never upload me" not in b"".join(opened.read(n) for n in opened.namelist())
    assert any("lies outside" in str(entry.get("reason")) for entry in logs)
