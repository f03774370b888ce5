"""The run directory: one layout, written by a live run and read by ``sync``, ``show`` and ``plot``.

::

    <output_dir>/
        checkpoint-<step>/           written by the trainer, as in Hugging Face
        runs/                        TensorBoard event files (unless TENSORBOARD_LOGGING_DIR is set)
        trainbus/<run_id>/           one per run (and per rank when world_size > 1: ``-rank<k>``)
            run.json                 the run record below: identity, sinks, status
            journal/                 every event, append-only, length-framed, checksummed,
                                     in segments (``journal.tbj``, one file, in older runs)
            cursors/<sink>.cursor    the last seq each sink acknowledged

``run.json`` is replaced atomically (write a temporary file, then rename), so a crash leaves either
the old or the new record, never half of one.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Final, Literal

import msgspec

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._files import replace_file
from trainbus.bus._paths import RUNS_FOLDER

__all__ = [
    "JOURNAL_NAME",
    "RUN_RECORD_NAME",
    "RunDir",
    "RunRecord",
    "SinkRecord",
    "find_run_dir",
    "new_run_id",
]

RUN_RECORD_NAME: Final = "run.json"
JOURNAL_NAME: Final = "journal"
LEGACY_JOURNAL_NAME: Final = "journal.tbj"

RecordStatus = Literal["running", "completed", "stopped", "failed", "killed"]


class SinkRecord(msgspec.Struct, frozen=True, kw_only=True):
    """How ``trainbus sync`` rebuilds a sink: a ``report_to`` name, or an importable class."""

    name: str
    """The sink's ``sink_name`` (its cursor file)."""
    integration: str | None = None
    """The ``report_to`` name it came from, rebuilt with ``from_env`` on sync."""
    factory: str | None = None
    """``module:Class`` of a user sink, rebuilt by calling it without arguments on sync."""


class RunRecord(msgspec.Struct, kw_only=True):
    """The contents of ``run.json``; new fields get defaults (old run directories stay readable)."""

    run_id: str
    run_name: str
    output_dir: str
    rank: int = 0
    world_size: int = 1
    created: float = 0.0
    finished: float | None = None
    status: RecordStatus = "running"
    error: str | None = None
    journal: str = JOURNAL_NAME
    sinks: list[SinkRecord] = []
    pid: int | None = None
    """The process that has the run open (while ``status`` is ``running``)."""
    host: str | None = None
    sink_pid: int | None = None
    """The sink process delivering for it (``TRAINBUS_SINK_PROCESS``), while the run is open."""

    def is_live(self) -> bool:
        """Whether the process that opened this run, or its sink process, still runs (as far as
        this host can tell).

        A ``running`` record whose processes are gone was killed: ``sync`` may finish its delivery.
        A sink process outlives a killed training process while it delivers what was journaled.
        """
        if self.status != "running" or self.pid is None:
            return False
        if self.host is not None and self.host != socket.gethostname():
            return True  # cannot check another machine's processes: assume it is alive
        return any(_alive(pid) for pid in (self.pid, self.sink_pid) if pid is not None)


def new_run_id() -> str:
    """A sortable, collision-resistant run id: UTC start time plus random hex."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class RunDir:
    """Paths of one run directory, and its ``run.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_run(
        cls, output_dir: Path, run_id: str, *, rank: int = 0, world_size: int = 1
    ) -> RunDir:
        name = run_id if world_size <= 1 else f"{run_id}-rank{rank}"
        return cls(output_dir / RUNS_FOLDER / name)

    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD_NAME

    @property
    def journal_path(self) -> Path:
        """The segmented journal, or the single-file journal of a run written before segments."""
        legacy = self.path / LEGACY_JOURNAL_NAME
        return legacy if legacy.is_file() else self.path / JOURNAL_NAME

    @property
    def cursor_dir(self) -> Path:
        return self.path / "cursors"

    def create(self) -> None:
        """Make the directory tree; the parent must have passed ``check_writable_dir``."""
        self.cursor_dir.mkdir(parents=True, exist_ok=True)

    def write_record(self, record: RunRecord) -> None:
        """Replace ``run.json`` atomically; in place when the disk is full (the final status
        must get out: a full disk must not leave a failed run saying "running")."""
        data = msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n"
        replace_file(self.record_path, data, in_place_when_full=True)

    def read_record(self) -> RunRecord:
        """Load ``run.json``; a missing or unreadable one is a ``ConfigurationError``."""
        try:
            data = self.record_path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"{str(self.path)!r} is not a trainbus run directory (no {RUN_RECORD_NAME} in it)"
            ) from exc
        try:
            return msgspec.json.decode(data, type=RunRecord)
        except msgspec.DecodeError as exc:
            raise ConfigurationError(
                f"{str(self.record_path)!r} is not a valid run record: {exc}"
            ) from exc


def find_run_dir(path: Path) -> RunDir:
    """Accept a run directory itself, or an ``output_dir`` holding runs (the newest is taken)."""
    if (path / RUN_RECORD_NAME).is_file():
        return RunDir(path)
    runs_root = path / RUNS_FOLDER
    if runs_root.is_dir():
        candidates = sorted(p for p in runs_root.iterdir() if (p / RUN_RECORD_NAME).is_file())
        if candidates:
            return RunDir(candidates[-1])
    if not path.exists():
        raise ConfigurationError(f"run directory {str(path)!r} does not exist")
    raise ConfigurationError(
        f"{str(path)!r} is neither a trainbus run directory (with {RUN_RECORD_NAME}) "
        f"nor an output_dir holding one under {RUNS_FOLDER}/"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
