"""A W&B run in offline mode survives a SIGKILL of the whole job, after ``trainbus sync``.

W&B's service (``wandb-core``) keeps the offline file's last block in memory and dies with the
job, so every point it had been handed since that block began is gone from the file. The sink
therefore keeps its cursor where the file holds the run (``Sink.durable_seq``), and ``trainbus
sync`` hands the SDK the rest again, into the same W&B run (a second offline directory that
``wandb sync`` uploads after the first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.orchestrator.test_kill_sync import CONFIG, log_count, sync
from tests.sinks.test_wandb import OFFLINE_ENV, OfflineRun
from tests.support.kill_job import kill_job
from trainbus.bus._cursor import CursorStore
from trainbus.bus._events import Log
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.rundir import RunDir, find_run_dir

pytest.importorskip("wandb")

ROOT = Path(__file__).resolve().parents[2]


def _kill_job_after(tmp_path: Path, env: dict[str, str], *, logs: int) -> RunDir:
    """Run ``trainbus train`` reporting to W&B offline in a session of its own, and SIGKILL
    every process of it (trainer, sink process, W&B's service) once the journal has ``logs``
    Log events and W&B's file holds some of them."""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(output_dir=tmp_path / "out", sinks="[]", report_to='["wandb"]'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainbus", "--log-level", "WARNING", "train", str(config)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180  # a hang guard only
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                run_dir = find_run_dir(tmp_path / "out")
            except ValueError:
                time.sleep(0.1)
                continue
            if CursorStore(run_dir.cursor_dir).read("wandb") >= 0 and log_count(run_dir) >= logs:
                return run_dir
            time.sleep(0.1)
        raise AssertionError(f"the run did not reach {logs} logs on disk within the guard")
    finally:
        kill_job(proc, tmp_path / "out")


@pytest.mark.slow
def test_sync_after_sigkill_of_the_job_completes_the_offline_run(tmp_path: Path) -> None:
    """Killed with its service, the offline file lacks the points of its last block; the cursor
    stayed where the file ends, and sync adds exactly the missing points to the same run."""
    env = dict(OFFLINE_ENV)  # the sink writes under the run directory
    run_dir = _kill_job_after(tmp_path, env, logs=400)
    expected = [
        e.global_step
        for e in JournalReader(run_dir.journal_path).read_from(0)
        if isinstance(e, Log) and "loss" in e.logs
    ]
    [killed_file] = sorted(run_dir.path.glob("wandb/offline-run-*/run-*.wandb"))
    killed = OfflineRun(run_dir.path, crashed=frozenset({killed_file}))
    on_disk = [step for step, _ in killed.series("train/loss")]
    assert on_disk and len(on_disk) < len(expected)  # the service died holding points

    result = sync(run_dir, env)
    assert result.returncode == 0, result.stderr
    run = OfflineRun(run_dir.path, crashed=frozenset({killed_file}))
    assert len(run.files) == 2 and run.complete == [False, True]
    assert {r.run_id for r in run.runs} == {killed.runs[0].run_id}  # one W&B run, resumed
    assert sorted(step for step, _ in run.series("train/loss")) == expected  # all, once
    assert run.config["learning_rate"] == pytest.approx(5e-5)  # the config survived too
