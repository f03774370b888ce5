"""``trainbus sync RUN_DIR``: deliver what the journal holds beyond each sink's cursor.

After a crash, a kill or a tracker outage, the journal still holds every event and each sink's
cursor says how far its destination got. Sync rebuilds the sinks the run recorded in ``run.json``
and runs the bus's replay: same filters, batching, retries and cursor updates as the live run.
Sinks are idempotent where their destination allows it, so running sync twice sends nothing twice.

Reading a run directory never executes code it names. ``run.json`` is data (run directories are
copied between machines and shared), so a ``report_to`` integration is rebuilt only through the
registry (``trainbus.orchestrator.registry``), by name, and a user sink recorded as
``module:Class`` is imported only when the caller allows that class (``allow_classes``; on the
command line ``--sink-class module:Class`` or ``--allow-run-classes``). Any other user sink is
skipped with one line saying how to include it; its events stay in the journal.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._journal import repair_journal
from trainbus.bus._runtime import replay
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport
from trainbus.orchestrator._dead_run import close_dead_run
from trainbus.orchestrator.registry import build_sinks, import_object
from trainbus.orchestrator.rundir import RunDir, RunRecord, SinkRecord, find_run_dir

__all__ = ["ClassAllowance", "SinkPlan", "plan_sinks", "rebuild_sinks", "sync_run"]

log = structlog.get_logger(__name__)


ClassAllowance: TypeAlias = bool | Collection[str]
"""Which ``module:Class`` sinks of ``run.json`` may be imported: all (``True``), none (``False``)
or the ones named."""


@dataclasses.dataclass(frozen=True)
class SinkPlan:
    """The sinks a replay will feed, and one line per recorded sink it leaves out, and why."""

    sinks: list[Sink]
    skipped: list[str]


def _skip_line(entry: SinkRecord, record: RunRecord) -> str:
    return (
        f"sink {entry.name!r} of run {record.run_id} skipped: run.json names the class "
        f"{entry.factory!r}, and reading a run directory never imports code it names; "
        f"pass --sink-class {entry.factory} (with --app-dir DIR if its module is not installed) "
        "to deliver it"
    )


def _user_sink(entry: SinkRecord, factory: str) -> Sink:
    cls = import_object(factory, field=f"sink {entry.name!r}")
    # Checked before the call: a name such as os:abort must never be called.
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigurationError(f"sink {entry.name!r} ({factory}) is not a Sink subclass")
    return cls()


def _rebuild(entry: SinkRecord, record: RunRecord, run_dir: RunDir, env: Mapping[str, str]) -> Sink:
    if entry.integration is not None:
        ((_, sink),) = build_sinks(
            [entry.integration], env, run_dir=run_dir.path, run_name=record.run_name
        )
        return sink
    if entry.factory is None:
        raise ConfigurationError(
            f"sink {entry.name!r} of run {record.run_id} was defined in a script or a local scope "
            "and cannot be rebuilt; pass it to sync_run(sinks=...) from Python instead"
        )
    return _user_sink(entry, entry.factory)


def _allowed(entry: SinkRecord, allow_classes: ClassAllowance) -> bool:
    if entry.integration is not None or entry.factory is None:
        return True  # registry names and script sinks never import anything named by the data
    if isinstance(allow_classes, bool):
        return allow_classes
    return entry.factory in allow_classes


def plan_sinks(
    run_dir: RunDir,
    *,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    allow_classes: ClassAllowance = False,
) -> SinkPlan:
    """The sinks ``run.json`` lists (or the ``only`` ones among them), ready for a replay.

    Args:
        run_dir: the run whose ``run.json`` names the sinks.
        env: the environment ``report_to`` integrations are rebuilt from (default: this process's).
        only: sink names to rebuild; each must be a sink of the run.
        allow_classes: the ``module:Class`` user sinks that may be imported and called (``True``:
            all of them); the others are skipped, each with a line in ``SinkPlan.skipped``.
    """
    record = run_dir.read_record()
    environ = dict(os.environ) if env is None else env
    known = [entry.name for entry in record.sinks]
    for name in only or ():
        if name not in known:
            raise ConfigurationError(
                f"--sink {name!r} is not a sink of run {record.run_id}; its sinks are {known!r}"
            )
    if not isinstance(allow_classes, bool):
        classes = sorted({e.factory for e in record.sinks if e.factory and not e.integration})
        for factory in allow_classes:
            if factory not in classes:
                raise ConfigurationError(
                    f"--sink-class {factory!r} is not a sink class of run {record.run_id}; "
                    f"its classes are {classes!r}"
                )
    chosen = [e for e in record.sinks if not only or e.name in only]
    sinks: list[Sink] = []
    skipped: list[str] = []
    for entry in chosen:
        if _allowed(entry, allow_classes):
            sinks.append(_rebuild(entry, record, run_dir, environ))
        else:
            skipped.append(_skip_line(entry, record))
    return SinkPlan(sinks=sinks, skipped=skipped)


def rebuild_sinks(
    run_dir: RunDir,
    *,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    allow_classes: ClassAllowance = False,
) -> list[Sink]:
    """The sinks ``plan_sinks`` would feed; user sinks not allowed are left out (logged)."""
    plan = plan_sinks(run_dir, env=env, only=only, allow_classes=allow_classes)
    for line in plan.skipped:
        log.warning("sink_skipped", reason=line)
    return plan.sinks


async def sync_run(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    sinks: Sequence[Sink] | None = None,
    deadline: float = math.inf,
    force: bool = False,
    allow_classes: ClassAllowance = False,
) -> dict[str, SinkReport]:
    """Replay ``path``'s journal into its sinks; returns each sink's report.

    ``sinks`` replaces the recorded ones (for user sinks that cannot be rebuilt by name). A run
    whose process is still alive is refused unless ``force``: its own sinks are delivering.
    ``allow_classes`` says which user sinks named in ``run.json`` may be imported (see
    ``plan_sinks``); the others are skipped with a warning.
    """
    run_dir = find_run_dir(path)
    record = run_dir.read_record()
    if record.is_live() and not force:
        raise ConfigurationError(
            f"run {record.run_id} is still open by process {record.pid} on {record.host}; its "
            "sinks are delivering. Wait for it to finish, or pass --force if that process is gone"
        )
    if not run_dir.journal_path.exists():
        raise ConfigurationError(f"{str(run_dir.path)!r} has no journal to sync")
    chosen = (
        list(sinks)
        if sinks is not None
        else rebuild_sinks(run_dir, env=env, only=only, allow_classes=allow_classes)
    )
    repair = repair_journal(run_dir.journal_path)
    if repair.torn_tail is not None:
        log.warning(
            "journal_torn_tail_truncated",
            run_dir=str(run_dir.path),
            last_seq=repair.last_seq,
            dropped_bytes=repair.torn_tail.dropped_bytes,
        )
    if close_dead_run(run_dir):  # so the trackers' runs end too (MLflow: KILLED)
        log.warning("dead_run_closed_as_killed", run_dir=str(run_dir.path))
    log.info("sync_started", run_dir=str(run_dir.path), sinks=[s.sink_name for s in chosen])
    reports = await replay(
        run_dir.journal_path, chosen, cursor_dir=run_dir.cursor_dir, deadline=deadline
    )
    for report in reports.values():
        log.info(
            "sync_sink_done",
            sink=report.name,
            delivered=report.delivered,
            undelivered=report.undelivered,
            skipped=report.skipped,
        )
    return reports
