"""One training job per ``output_dir``: a lock that names the other process when it is taken.

Two trainings writing into one ``output_dir`` overwrite each other's checkpoints and both exit 0,
so ``train()`` takes ``<output_dir>/.trainbus.lock`` for its duration: an exclusive POSIX record
lock (``fcntl.lockf``, which NFS supports too) on that file, which holds the holder's pid, host,
job and start time for the error message.

* **One job shares it.** Every process of a job (the ranks of one ``torchrun``, on every node of
  a shared file system) computes the same job id: ``TORCHELASTIC_RUN_ID`` (torchrun's rendezvous
  id) with the job's ``MASTER_ADDR:MASTER_PORT`` (two jobs may reuse a rendezvous id, never at
  one master at once), else ``MASTER_ADDR:MASTER_PORT`` of a process group, else the process
  itself. The first
  process to lock holds it; a process that finds it held by its own job goes on without it.
* **A dead holder's lock is free.** The kernel drops a record lock when its process exits, however
  it exits (SIGKILL included), so a stale lock needs no clean-up: the next job simply takes it.
* **Nothing stays.** The holder removes the file before it lets go; a process that opened the old
  file meanwhile and then locks it sees that the name no longer leads to what it locked, and
  starts again (the usual lock-file dance), so two processes never hold two different files.

POSIX locks belong to a process, and closing any descriptor of the file drops them, so a process
keeps one descriptor per path and counts its users (two trainers of one process share a lock).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from trainbus.bus import _world
from trainbus.bus._errors import ConfigurationError

try:
    import fcntl
except ImportError:  # Windows: no POSIX record locks, so no lock (documented)
    fcntl = None  # type: ignore[assignment]  # checked before every use

__all__ = ["LOCK_NAME", "hold_output_dir", "job_id"]

LOCK_NAME: Final = ".trainbus.lock"
_READ_ATTEMPTS: Final = 100
"""The holder writes its record just after locking; a reader retries this many times, 10 ms
apart, before it calls the record unreadable (ranks of one job start within that window)."""

_guard = threading.Lock()
_held: dict[Path, list[int]] = {}
"""Per lock path in this process: ``[descriptor, users]``."""


def job_id() -> str:
    """What the processes of one training job have in common, and two jobs never do."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    master = f"@{address}:{port}" if address and port else ""
    if run_id and run_id != "none":
        # A rendezvous id can be reused by another job at the same time; its master cannot.
        return f"torchelastic:{run_id}{master}"
    if master and _world.world_size() > 1:
        return f"group:{address}:{port}"
    return f"process:{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def hold_output_dir(output_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``output_dir``'s lock for the block, or raise a `ConfigurationError` naming the holder.

    Args:
        output_dir: the training's output directory; created if missing, and removed again on
            the way out if the block left it empty (a run refused before it wrote anything).
    """
    if fcntl is None:
        yield
        return
    path = Path(output_dir).resolve() / LOCK_NAME
    created = _missing_dirs(path.parent)
    owned = _acquire(path)
    try:
        yield
    finally:
        if owned:
            _release(path)
            for directory in created:  # deepest first; stops at the first one holding anything
                try:
                    directory.rmdir()
                except OSError:
                    break


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _acquire(path: Path) -> bool:
    """Take or join the lock; ``True`` when this process now holds it (and must release it)."""
    with _guard:
        if path in _held:
            _held[path][1] += 1
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = _read_holder(fd)
                os.close(fd)
                if holder.get("job") == job_id():
                    return False  # another process of this job holds it for all of us
                raise ConfigurationError(_busy_message(path, holder)) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file its holder removed meanwhile: take the new one
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job": job_id(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8") + b"\n", 0)
        _held[path] = [fd, 1]
        return True


def _release(path: Path) -> None:
    with _guard:
        entry = _held[path]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[path]
        fd = entry[0]
        try:
            path.unlink(missing_ok=True)  # first, while still locked (see the module docstring)
        finally:
            os.close(fd)  # drops the lock


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_holder(fd: int) -> dict[str, object]:
    """The holder's record; it may still be writing it, so an empty file is read again."""
    for _ in range(_READ_ATTEMPTS):
        raw = os.pread(fd, 4096, 0)
        if raw.endswith(b"\n"):
            try:
                record = json.loads(raw)
            except ValueError:
                break
            return record if isinstance(record, dict) else {}
        time.sleep(0.01)  # the holder locked but has not written its record yet
    return {}


def _busy_message(path: Path, holder: dict[str, object]) -> str:
    output_dir = path.parent
    if not holder:
        who = "another process (its record is unreadable)"
    else:
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')} (job {holder.get('job')}, "
            f"since {holder.get('since')})"
        )
    return (
        f"output_dir {str(output_dir)!r} is in use by another training: {who}; wait for it to "
        f"end or choose another output_dir (lock file {path})."
    )
