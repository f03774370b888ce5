"""Reading a run directory never executes code it names, nor follows a path out of it.

A run directory is data: copied between machines, shared, possibly crafted. Here one holds a
``run.json`` naming ``os:abort`` and a class whose module is a ``.py`` file inside the run
directory (importing it would create a marker file), a module shadowing ``httpx`` (which the
MLflow sink imports), a journal whose ``Artifact`` and ``RunStarted.output_dir`` point outside,
and a ``tensorboard.json`` whose ``log_dir`` points outside. ``trainbus sync``, ``show`` and
``plot`` run on it as subprocesses from inside the run directory, where ``sys.path`` and the
working directory would matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from tests.sinks.scripted import scripted_run
from tests.support.mlflow_server import MlflowServer
from trainbus.bus._events import Artifact, RunStarted
from trainbus.bus._journal import JournalWriter
from trainbus.orchestrator.rundir import RunDir, RunRecord, SinkRecord

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "20260101-000000-abcdef"


@dataclass(frozen=True)
class Hostile:
    """A crafted run directory and the places it must never touch."""

    run_dir: Path
    outside: Path
    marker: Path

    def files_outside(self) -> list[str]:
        """Everything under ``outside`` (only the secret that was put there)."""
        return sorted(p.relative_to(self.outside).as_posix() for p in self.outside.rglob("*"))


def _marker_module(marker: Path, extra: str = "") -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n{extra}"


def make_hostile(tmp_path: Path, *, mlflow: bool = False) -> Hostile:
    """Write the crafted run directory described in the module docstring."""
    run_dir = tmp_path / "out" / "trainbus" / RUN_ID
    run_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("never upload me")
    marker = tmp_path / "marker"
    (run_dir / "evil.py").write_text(_marker_module(marker, "class EvilSink:\n    pass\n"))
    (run_dir / "httpx.py").write_text(_marker_module(marker))
    sinks = [
        SinkRecord(name="abort", factory="os:abort"),
        SinkRecord(name="evil", factory="evil:EvilSink"),
        SinkRecord(name="tensorboard", integration="tensorboard"),
    ]
    if mlflow:
        sinks.append(SinkRecord(name="mlflow", integration="mlflow"))
    record = RunRecord(
        run_id=RUN_ID, run_name="hostile", output_dir="/", status="completed", sinks=sinks
    )
    RunDir(run_dir).write_record(record)
    events = scripted_run(5, run_id=RUN_ID, checkpoint=secret)
    started = events[0]
    assert isinstance(started, RunStarted)
    events[0] = msgspec.structs.replace(started, output_dir=str(outside))
    assert any(isinstance(e, Artifact) and e.path == str(secret) for e in events)
    writer = JournalWriter.open(run_dir / "journal.tbj")
    try:
        writer.append(events)
    finally:
        writer.close()
    state = {"written_seq": -1, "log_dir": str(outside / "tb")}
    (run_dir / "tensorboard.json").write_text(json.dumps(state))
    return Hostile(run_dir=run_dir, outside=outside, marker=marker)


def trainbus(
    hostile: Hostile, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m trainbus ARGS`` run from inside the run directory."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainbus", "--log-level", "WARNING", *args],
        cwd=hostile.run_dir,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _list_artifacts(server: MlflowServer, run_id: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    return [a.path for a in client.list_artifacts(run_id)]


@pytest.mark.mlflow
def test_sync_of_a_hostile_run_executes_nothing_and_stays_inside(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """Sync imports no class run.json names and no module from the working directory, skips the
    user sinks with a line saying how to include them, uploads no file from outside (with
    HF_MLFLOW_LOG_ARTIFACTS=1) and refuses the outside log_dir, while MLflow gets the metrics."""
    hostile = make_hostile(tmp_path, mlflow=True)
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_EXPERIMENT_NAME": f"trainbus-hostile-{uuid.uuid4().hex[:8]}",
        "HF_MLFLOW_LOG_ARTIFACTS": "1",
    }
    result = trainbus(hostile, "sync", ".", env=env)

    assert not hostile.marker.exists(), result.stderr  # neither evil.py nor httpx.py ran
    assert result.returncode == 1, result.stderr  # not aborted; the skipped sinks wait for sync
    lines = result.stdout.splitlines()
    assert any("'abort'" in line and "--sink-class os:abort" in line for line in lines)
    assert any("'evil'" in line and "--sink-class evil:EvilSink" in line for line in lines)
    tensorboard = next(line for line in lines if line.startswith("tensorboard:"))
    assert "disabled" in tensorboard and "log_dir" in tensorboard and "outside" in tensorboard
    assert "mlflow: delivered" in result.stdout and "undelivered 0" in result.stdout
    assert hostile.files_outside() == ["secret.txt"]  # nothing written outside
    assert "artifact refused" in result.stderr
    mlflow_state = json.loads((hostile.run_dir / "mlflow.json").read_text())
    assert _list_artifacts(mlflow_server, mlflow_state["run_id"]) == []


def test_sync_imports_a_named_class_only_from_app_dir_never_the_working_directory(
    tmp_path: Path,
) -> None:
    """``--sink-class evil:EvilSink`` run inside the run directory cannot import evil.py from
    it (one-line error, exit 2); ``os:abort`` named explicitly is refused as no Sink subclass
    before anything calls it."""
    hostile = make_hostile(tmp_path)
    named = trainbus(hostile, "sync", ".", "--sink-class", "evil:EvilSink")
    assert named.returncode == 2, named.stderr
    assert "cannot import module 'evil'" in named.stderr
    assert len(named.stderr.strip().splitlines()) == 1
    aborting = trainbus(hostile, "sync", ".", "--sink-class", "os:abort")
    assert aborting.returncode == 2, aborting.stderr  # SIGABRT would be -6
    assert "is not a Sink subclass" in aborting.stderr
    unknown = trainbus(hostile, "sync", ".", "--sink-class", "json:dumps")
    assert unknown.returncode == 2 and "is not a sink class of run" in unknown.stderr
    assert not hostile.marker.exists()


def test_allow_flags_import_the_recorded_user_sink_when_asked(tmp_path: Path) -> None:
    """With ``--app-dir`` naming where the module lives, ``--allow-run-classes`` does import the
    recorded class (proof that the skip above is the flag's doing, not a broken import)."""
    hostile = make_hostile(tmp_path)
    result = trainbus(
        hostile, "sync", ".", "--sink", "evil", "--allow-run-classes", "--app-dir", "."
    )
    assert hostile.marker.exists()
    assert result.returncode == 2 and "is not a Sink subclass" in result.stderr


SHOW_THEN_CHECK = """
import sys
from trainbus.orchestrator.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.startswith("trainbus.sinks") or m in ("evil", "httpx"))
print("LOADED", loaded)
raise SystemExit(code)
"""


@pytest.mark.parametrize("command", [["show"], ["show", "--json"], ["plot", "-o", "c.png"]])
def test_show_and_plot_of_a_hostile_run_import_no_sink_code(
    tmp_path: Path, command: list[str]
) -> None:
    """``show`` and ``plot`` read the hostile run without importing any sink module, any module
    of the run directory or anything it names, and write nothing outside it."""
    hostile = make_hostile(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", SHOW_THEN_CHECK, *command, "."],
        cwd=hostile.run_dir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
    assert not hostile.marker.exists()
    assert hostile.files_outside() == ["secret.txt"]
