"""A training process killed with SIGKILL while a sink is behind; ``trainbus sync`` finishes.

The journal holds every event the process published; each sink's cursor says how far its
destination got. Sync delivers exactly the rest: nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainbus.bus._cursor import CursorStore
from trainbus.bus._errors import JournalError
from trainbus.bus._events import Evaluate, Log
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.rundir import RunDir, find_run_dir

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
model = "trainbus.trainer.testing:TinyRegressor"
train_dataset = "trainbus.trainer.testing:RegressionDataset"
sinks = {sinks}

[args]
output_dir = "{output_dir}"
max_steps = 200000
per_device_train_batch_size = 8
logging_steps = 1
save_strategy = "no"
report_to = {report_to}
disable_tqdm = true
"""


def start_training(tmp_path: Path, *, sinks: str, report_to: str, env: dict[str, str]) -> Any:
    """Start ``trainbus train`` on an endless tiny run in its own process."""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(output_dir=tmp_path / "out", sinks=sinks, report_to=report_to))
    environ = {**os.environ, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "train", str(config)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def log_count(run_dir: RunDir) -> int:
    """How many ``Log`` events the journal holds right now (tolerating a half-written tail)."""
    try:
        return sum(
            1 for e in JournalReader(run_dir.journal_path).read_from(0) if isinstance(e, Log)
        )
    except JournalError:
        return 0


def kill_when(proc: Any, tmp_path: Path, sink: str, *, logs: int, timeout: float = 120) -> RunDir:
    """SIGKILL ``proc`` once the journal has ``logs`` Log events and ``sink`` acknowledged some."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                run_dir = find_run_dir(tmp_path / "out")
            except ValueError:
                time.sleep(0.1)
                continue
            acked = CursorStore(run_dir.cursor_dir).read(sink)
            if acked >= 0 and log_count(run_dir) >= logs:
                return run_dir
            time.sleep(0.1)
        raise AssertionError(f"the run did not reach {logs} logs within {timeout} s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def sync(run_dir: RunDir, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """``trainbus sync RUN_DIR [OPTIONS]`` in a fresh process."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "trainbus", "--log-level", "WARNING", "sync"),
            *(str(run_dir.path), *options),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_sync_delivers_the_rest_after_sigkill_without_duplicates(tmp_path: Path) -> None:
    """A slow file sink behind at SIGKILL gets exactly the missing events from ``sync``."""
    dest = tmp_path / "metrics.jsonl"
    proc = start_training(
        tmp_path,
        sinks='["tests.orchestrator._sinks:SlowJsonLines"]',
        report_to='"none"',
        env={"TRAINBUS_JSONL": str(dest), "TRAINBUS_TEST_SINK_DELAY": "0.2"},
    )
    run_dir = kill_when(proc, tmp_path, "slow-jsonl", logs=100)
    assert run_dir.read_record().status == "running"  # the process never got to close the run
    before = len(dest.read_text().splitlines())

    # A user sink named in run.json is imported only when the command line names it.
    user_sink = ("--sink-class", "tests.orchestrator._sinks:SlowJsonLines", "--app-dir", str(ROOT))
    result = sync(run_dir, {"TRAINBUS_JSONL": str(dest)}, *user_sink)
    assert result.returncode == 0, result.stderr

    expected = [
        e.seq
        for e in JournalReader(run_dir.journal_path).read_from(0)
        if isinstance(e, Log | Evaluate)
    ]
    delivered = [json.loads(line)["seq"] for line in dest.read_text().splitlines()]
    assert before < len(expected)  # the sink really was behind when the process died
    assert delivered == expected  # everything, in order, once
    assert sync(run_dir, {"TRAINBUS_JSONL": str(dest)}, *user_sink).returncode == 0
    assert len(dest.read_text().splitlines()) == len(expected)  # a second sync adds nothing


def mlflow_history(url: str, run_id: str, key: str) -> list[int]:
    """Steps of every point MLflow stored for ``key`` (duplicates included)."""
    response = httpx.get(
        f"{url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": run_id, "metric_key": key, "max_results": 100000},
        timeout=30,
    )
    response.raise_for_status()
    return [int(m["step"]) for m in response.json().get("metrics", [])]


@pytest.mark.mlflow
@pytest.mark.slow
def test_sync_completes_mlflow_after_sigkill_behind_a_slow_proxy(
    tmp_path: Path, mlflow_server: Any
) -> None:
    """MLflow behind a slow proxy at SIGKILL holds every loss point exactly once after sync."""
    from tests.support.fault_proxy import FaultProxy

    experiment = f"kill-sync-{uuid.uuid4().hex[:8]}"
    with FaultProxy(mlflow_server.url, latency=0.3) as proxy:
        proc = start_training(
            tmp_path,
            sinks="[]",
            report_to='["mlflow"]',
            env={"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_EXPERIMENT_NAME": experiment},
        )
        run_dir = kill_when(proc, tmp_path, "mlflow", logs=150)
    last_seq = JournalReader(run_dir.journal_path).last_seq()
    assert CursorStore(run_dir.cursor_dir).read("mlflow") < last_seq  # behind at the kill

    result = sync(
        run_dir,
        env={"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert result.returncode == 0, result.stderr
    mlflow_run_id = json.loads((run_dir.path / "mlflow.json").read_text())["run_id"]
    steps = mlflow_history(mlflow_server.url, mlflow_run_id, "loss")
    expected = [
        e.global_step
        for e in JournalReader(run_dir.journal_path).read_from(0)
        if isinstance(e, Log) and "loss" in e.logs
    ]
    assert sorted(steps) == expected  # every logged step, none twice
