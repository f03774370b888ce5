"""``trainbus train`` stopped by SIGTERM or SIGINT: a resumable checkpoint, a killed run, no debris.

Each training runs in its own process and signals itself at a known point through a test callback
or model (``tests/orchestrator/_signalling.py``), so the tests wait only for the process to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.trainer.recording import StopAt
from trainbus.bus._events import Event, Log, RunFinished, Save
from trainbus.bus._journal import JournalReader, repair_journal
from trainbus.orchestrator.config import load_train_config
from trainbus.orchestrator.rundir import RunDir, find_run_dir
from trainbus.orchestrator.task import prepare_run
from trainbus.trainer import _checkpoint as ckpt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180

CONFIG = """
model = "{model}"
train_dataset = "trainbus.trainer.testing:RegressionDataset"
callbacks = ["tests.orchestrator._signalling:SignalAt"]

[args]
output_dir = "{output_dir}"
max_steps = 200
per_device_train_batch_size = 8
logging_steps = 1
save_strategy = "steps"
save_steps = {save_steps}
report_to = {report_to}
disable_tqdm = true
seed = 3
"""


def write_config(
    tmp_path: Path,
    *,
    model: str = "trainbus.trainer.testing:TinyRegressor",
    save_steps: int = 1000,
    report_to: str = '"none"',
) -> Path:
    """A run file for an endless-enough tiny regression run in ``tmp_path / "out"``."""
    config = tmp_path / "run.toml"
    config.write_text(
        CONFIG.format(
            model=model,
            output_dir=tmp_path / "out",
            save_steps=save_steps,
            report_to=report_to,
        )
    )
    return config


def train(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``trainbus train CONFIG`` in a fresh process, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "train", str(config)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def journal(run_dir: RunDir) -> list[Event]:
    """Every event of the run's journal (raises if any record is damaged)."""
    return list(JournalReader(run_dir.journal_path).read_from(0))


def hidden_dirs(out: Path) -> list[str]:
    """Staging or retired checkpoint directories left in ``out`` (the output_dir lock is a file)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.is_dir())


def test_sigterm_mid_run_saves_a_resumable_checkpoint_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM at step 7: exit 143, checkpoint-7, run killed, full journal; resume matches."""
    config = write_config(tmp_path)
    result = train(config, {"TRAINBUS_TEST_SIGNAL": "SIGTERM@7"})
    assert result.returncode == 143, result.stderr

    out = tmp_path / "out"
    run_dir = find_run_dir(out)
    assert run_dir.read_record().status == "killed"
    events = journal(run_dir)
    assert [e.global_step for e in events if isinstance(e, Log) and "loss" in e.logs] == list(
        range(1, 8)
    )
    assert [e.global_step for e in events if isinstance(e, Save)] == [7]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "killed"
    assert [p.name for p in ckpt.sorted_checkpoints(out)] == ["checkpoint-7"]
    assert hidden_dirs(out) == []

    # The uninterrupted run to step 10, and the killed one resumed to step 10, agree.
    loaded = load_train_config(config)
    straight = prepare_run(loaded, overrides={"output_dir": str(tmp_path / "straight")}).trainer
    straight.add_callback(StopAt(10))
    straight.train()
    resumed = prepare_run(loaded).trainer
    resumed.add_callback(StopAt(10))
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-7"))

    def losses(trainer: Any) -> list[tuple[int, float]]:
        history = trainer.state.log_history
        return [(e["step"], e["loss"]) for e in history if "loss" in e and e["step"] > 7]

    assert losses(resumed) == losses(straight) and len(losses(straight)) == 3
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_sigint_exits_130_with_the_run_killed(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) at step 3 ends ``trainbus train`` with 130 and the run marked killed."""
    result = train(write_config(tmp_path), {"TRAINBUS_TEST_SIGNAL": "SIGINT@3"})
    assert result.returncode == 130, result.stderr
    run_dir = find_run_dir(tmp_path / "out")
    assert run_dir.read_record().status == "killed"
    assert [p.name for p in ckpt.sorted_checkpoints(tmp_path / "out")] == ["checkpoint-3"]


def test_sigterm_mid_save_completes_that_checkpoint_and_stops(tmp_path: Path) -> None:
    """SIGTERM while checkpoint-4's weights are written: it completes whole, nothing more runs."""
    config = write_config(
        tmp_path, model="tests.orchestrator._signalling:SignalOnSaveRegressor", save_steps=4
    )
    result = train(config, {"TRAINBUS_TEST_SIGNAL_ON_SAVE": "SIGTERM"})
    assert result.returncode == 143, result.stderr

    out = tmp_path / "out"
    assert [p.name for p in ckpt.sorted_checkpoints(out)] == ["checkpoint-4"]
    assert hidden_dirs(out) == []
    files = {p.name for p in (out / "checkpoint-4").iterdir()}
    assert {ckpt.WEIGHTS_NAME, ckpt.OPTIMIZER_NAME, ckpt.STATE_NAME, ckpt.RNG_NAME} <= files
    run_dir = find_run_dir(out)
    assert run_dir.read_record().status == "killed"
    assert [e.global_step for e in journal(run_dir) if isinstance(e, Save)] == [4]


def test_a_second_sigterm_mid_save_exits_at_once_and_the_next_start_cleans_up(
    tmp_path: Path,
) -> None:
    """Two SIGTERMs mid-save end the process by the signal; the journal reads back and the
    next training removes the half-written staging directory."""
    config = write_config(
        tmp_path, model="tests.orchestrator._signalling:SignalOnSaveRegressor", save_steps=4
    )
    result = train(config, {"TRAINBUS_TEST_SIGNAL_ON_SAVE": "SIGTERMx2"})
    assert result.returncode == -signal.SIGTERM, result.stderr

    out = tmp_path / "out"
    assert ckpt.sorted_checkpoints(out) == []
    assert [name.split(".tmp-")[0] for name in hidden_dirs(out)] == [".checkpoint-4"]
    run_dir = find_run_dir(out)
    assert run_dir.read_record().status == "running"  # no cleanup ran: sync's case
    repair_journal(run_dir.journal_path)  # a torn tail, if any, is cut; the rest must decode
    logged = [e.global_step for e in journal(run_dir) if isinstance(e, Log)]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) <= 4  # a clean prefix

    prepare_run(load_train_config(config), overrides={"max_steps": 1}).trainer.train()
    assert hidden_dirs(out) == []


@pytest.mark.mlflow
def test_sigterm_marks_the_mlflow_run_killed(tmp_path: Path, mlflow_server: Any) -> None:
    """A run stopped by SIGTERM ends as ``KILLED`` on the real MLflow server."""
    experiment = f"graceful-stop-{uuid.uuid4().hex[:8]}"
    result = train(
        write_config(tmp_path, report_to='["mlflow"]'),
        {
            "TRAINBUS_TEST_SIGNAL": "SIGTERM@5",
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "MLFLOW_EXPERIMENT_NAME": experiment,
        },
    )
    assert result.returncode == 143, result.stderr
    run_dir = find_run_dir(tmp_path / "out")
    mlflow_run_id = recorded_mlflow_run_id(run_dir)
    response = httpx.get(
        f"{mlflow_server.url}/api/2.0/mlflow/runs/get", params={"run_id": mlflow_run_id}, timeout=30
    )
    response.raise_for_status()
    assert response.json()["run"]["info"]["status"] == "KILLED"


def recorded_mlflow_run_id(run_dir: RunDir) -> str:
    """The MLflow run id the sink recorded in the run directory."""
    return str(json.loads((run_dir.path / "mlflow.json").read_text())["run_id"])


def mlflow_status(url: str, run_id: str) -> str:
    """The status the MLflow server holds for ``run_id``."""
    response = httpx.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
    response.raise_for_status()
    return str(response.json()["run"]["info"]["status"])


@pytest.mark.mlflow
def test_sync_of_a_sigkilled_run_ends_it_killed_in_mlflow(
    tmp_path: Path, mlflow_server: Any
) -> None:
    """After SIGKILL the run is left ``running``; ``trainbus sync`` ends it KILLED in MLflow."""
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_EXPERIMENT_NAME": f"sigkill-sync-{uuid.uuid4().hex[:8]}",
    }
    result = train(
        write_config(tmp_path, report_to='["mlflow"]'), {**env, "TRAINBUS_TEST_SIGNAL": "SIGKILL@5"}
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    run_dir = find_run_dir(tmp_path / "out")
    assert run_dir.read_record().status == "running"  # the process never closed it

    def sync() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "sync", str(run_dir.path)],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )

    assert sync().returncode == 0
    mlflow_run_id = recorded_mlflow_run_id(run_dir)  # created live, or by sync if it was too late
    assert mlflow_status(mlflow_server.url, mlflow_run_id) == "KILLED"
    assert run_dir.read_record().status == "killed"
    events = journal(run_dir)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "killed"
    assert sync().returncode == 0  # a second sync appends and sends nothing new
    assert len(journal(run_dir)) == len(events)
