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

**Run ids.** A run id is fresh per launch (``new_run_id``: UTC start time and random hex), or
given on purpose to continue a run (``$TRAINBUS_RUN_ID``, ``Orchestrator(run_id=...)``). Under
``torchrun`` every rank takes world rank zero's (``trainbus.trainer._run_identity``); torchrun's
rendezvous id is recorded for information only (``rendezvous_id``), since a reused
``--rdzv-id`` names two jobs alike.

**Finding the run of an output_dir.** ``sync``, ``show`` and ``plot`` take the latest job (the
newest ``created`` of its records) and, of its ranks, world rank zero (the lowest rank present
when rank zero's directory lives on another node); ``find_job`` also names the other ranks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import msgspec

from trainbus.bus._env import env_str
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._files import replace_file
from trainbus.bus._paths import RUNS_FOLDER

__all__ = [
    "JOURNAL_NAME",
    "JobRuns",
    "RUN_ID_ENV",
    "RUN_RECORD_NAME",
    "RunDir",
    "RunRecord",
    "SinkRecord",
    "check_run_id",
    "find_job",
    "find_run_dir",
    "new_run_id",
    "proposed_run_id",
    "rendezvous_id",
]

RUN_RECORD_NAME: Final = "run.json"
JOURNAL_NAME: Final = "journal"
LEGACY_JOURNAL_NAME: Final = "journal.tbj"

RUN_ID_ENV: Final = "TRAINBUS_RUN_ID"
"""Names the run to continue (its directory, journal and tracker runs) instead of a fresh one."""
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")

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
    rendezvous_id: str | None = None
    """torchrun's rendezvous id (``--rdzv-id``) of the job, for information: never the run id."""
    journal_events: str = "full"
    """What this rank's journal keeps: ``full``, ``errors`` or ``none`` (no journal); see
    ``trainbus.orchestrator._rank_journal``."""

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


def proposed_run_id(env: Mapping[str, str]) -> str:
    """``$TRAINBUS_RUN_ID`` (continue that run on purpose), else a fresh id; under ``torchrun``
    only world rank zero's proposal is used."""
    return env_str(env, RUN_ID_ENV) or new_run_id()


def check_run_id(run_id: str) -> None:
    """Refuse a run id that is not a plain directory name (it names ``trainbus/<run_id>``)."""
    if not _RUN_ID.fullmatch(run_id) or not run_id.strip("."):
        raise ConfigurationError(
            f"run_id must be letters, digits, '.', '_' or '-' (it names a directory), "
            f"got {run_id!r}"
        )


def rendezvous_id(env: Mapping[str, str]) -> str | None:
    """torchrun's ``TORCHELASTIC_RUN_ID``, unless unset or its placeholder ``none``."""
    value = env_str(env, "TORCHELASTIC_RUN_ID")
    return None if value in (None, "none") else value


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


@dataclasses.dataclass(frozen=True)
class JobRuns:
    """The run directories of one job found in an ``output_dir``: the one to read, and the rest."""

    chosen: RunDir
    """World rank zero's directory (the lowest rank present when rank zero's is elsewhere)."""
    record: RunRecord
    """``chosen``'s ``run.json``."""
    others: list[tuple[RunDir, RunRecord]]
    """The job's other ranks, in rank order."""

    def describe_others(self) -> str | None:
        """One line naming the other ranks' directories and their status, or ``None``."""
        if not self.others and self.record.rank == 0:
            return None
        parts = [f"{d.path.name} ({_status(r)})" for d, r in self.others]
        line = f"run {self.record.run_id}: reading rank {self.record.rank}"
        if self.record.rank != 0:
            line += " (rank 0's directory is not in this output_dir)"
        return line + (f"; other ranks: {', '.join(parts)}" if parts else "")


def _status(record: RunRecord) -> str:
    if record.status == "running" and not record.is_live():
        return "killed (process gone)"
    return record.status + (f": {record.error}" if record.error else "")


def _records(runs_root: Path) -> list[tuple[RunDir, RunRecord]]:
    """Every run directory under ``runs_root`` with a readable ``run.json`` (others are skipped:
    a run being created, or a stray folder, must not hide the rest)."""
    found = []
    for path in sorted(runs_root.iterdir()):
        run_dir = RunDir(path)
        if not run_dir.record_path.is_file():
            continue
        try:
            found.append((run_dir, run_dir.read_record()))
        except ConfigurationError:
            continue
    return found


def find_job(path: Path) -> JobRuns:
    """The latest job's runs in an ``output_dir``, or the run directory ``path`` itself.

    The latest job is the run id whose records were created last (by name when they tie, as
    older records carry no time); of its ranks, world rank zero is read. A directory named
    directly is read as it is, whatever its rank.
    """
    if (path / RUN_RECORD_NAME).is_file():
        run_dir = RunDir(path)
        return JobRuns(chosen=run_dir, record=run_dir.read_record(), others=[])
    runs_root = path / RUNS_FOLDER
    found = _records(runs_root) if runs_root.is_dir() else []
    if not found:
        if not path.exists():
            raise ConfigurationError(f"run directory {str(path)!r} does not exist")
        raise ConfigurationError(
            f"{str(path)!r} is neither a trainbus run directory (with {RUN_RECORD_NAME}) "
            f"nor an output_dir holding one under {RUNS_FOLDER}/"
        )
    newest: dict[str, tuple[float, str]] = {}
    for run_dir, record in found:
        key = (record.created, run_dir.path.name)
        newest[record.run_id] = max(newest.get(record.run_id, key), key)
    latest = max(newest, key=lambda run_id: newest[run_id])
    job = sorted(((d, r) for d, r in found if r.run_id == latest), key=lambda item: item[1].rank)
    (chosen, record), *others = job
    return JobRuns(chosen=chosen, record=record, others=others)


def find_run_dir(path: Path) -> RunDir:
    """Accept a run directory itself, or an ``output_dir`` holding runs (see ``find_job``)."""
    return find_job(path).chosen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
