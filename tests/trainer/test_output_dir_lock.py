"""One training job per output_dir: another live job is named, a dead one's lock is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.recording import make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus import ConfigurationError
from trainbus.trainer._lock import LOCK_NAME, hold_output_dir

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from trainbus.trainer._lock import hold_output_dir
with hold_output_dir(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder_env() -> dict[str, str]:
    """Extra environment of ``other_job`` (a test parametrizes it to join a job)."""
    return {}


@pytest.fixture
def other_job(tmp_path: Path, holder_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``tmp_path/out``'s lock until the test lets it go or kills it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "out")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, **holder_env},
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_job_is_refused_naming_the_holder(
    tmp_path: Path, other_job: subprocess.Popen[str]
) -> None:
    """train() on an output_dir another live job holds fails before its run opens, naming it."""
    run = make_run(tmp_path, max_steps=2)
    with pytest.raises(ConfigurationError) as info:
        run.trainer.train()
    message = str(info.value)
    assert f"pid {other_job.pid} on host {socket.gethostname()}" in message
    assert "is in use by another training" in message and LOCK_NAME in message
    assert not run.sink.opened  # nothing of this run was started


def test_a_dead_holders_lock_is_taken_over(
    tmp_path: Path, other_job: subprocess.Popen[str]
) -> None:
    """Once the holder is SIGKILLed its lock is free: the next training takes it and finishes."""
    other_job.send_signal(signal.SIGKILL)
    other_job.wait()
    run = make_run(tmp_path, max_steps=2)
    assert run.trainer.train().global_step == 2
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released and removed


@pytest.mark.parametrize("holder_env", [{"TORCHELASTIC_RUN_ID": "job-17"}])
def test_processes_of_one_job_share_the_lock(
    tmp_path: Path, other_job: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another rank of the same torchrun job (one rendezvous id) holding the lock shares it."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-17")
    run = make_run(tmp_path, max_steps=2)
    assert run.trainer.train().global_step == 2
    assert other_job.poll() is None  # the holder kept it all along
    assert b'"job": "torchelastic:job-17"' in (tmp_path / "out" / LOCK_NAME).read_bytes()


@pytest.mark.parametrize(
    "holder_env",
    [{"TORCHELASTIC_RUN_ID": "job-17", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}],
)
def test_another_job_reusing_the_rendezvous_id_is_refused(
    tmp_path: Path, other_job: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rendezvous id can be reused by a job running at the same time (its own master): that
    job is another one and does not share the lock."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-17")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29501")
    run = make_run(tmp_path, max_steps=2)
    with pytest.raises(ConfigurationError, match="is in use by another training"):
        run.trainer.train()


def test_one_process_may_hold_a_lock_twice(tmp_path: Path) -> None:
    """Nested holds in one process share the lock, which is released by the outermost only."""
    with hold_output_dir(tmp_path), hold_output_dir(tmp_path):
        pass
    with hold_output_dir(tmp_path):
        assert (tmp_path / LOCK_NAME).read_bytes().startswith(b'{"pid": ')
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_directory_created_for_the_lock_goes_when_left_empty(tmp_path: Path) -> None:
    """An output_dir the lock created is removed again when nothing else was written into it."""
    out = tmp_path / "a" / "b"
    with hold_output_dir(out):
        assert (out / LOCK_NAME).is_file()
    assert not (tmp_path / "a").exists()
    with hold_output_dir(out):
        (out / "checkpoint-1").mkdir(parents=True)
    assert (out / "checkpoint-1").is_dir() and not (out / LOCK_NAME).exists()
