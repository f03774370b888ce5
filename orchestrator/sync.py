"""``trainbus sync RUN_DIR``: deliver what the journal holds beyond each sink's cursor.

After a crash, a kill or a tracker outage, the journal still holds every event and each sink's
cursor says how far its destination got. Sync rebuilds the sinks the run recorded in ``run.json``
(``report_to`` integrations from the current environment, user sinks from their class) and runs
the bus's replay: same filters, batching, retries and cursor updates as the live run. Sinks are
idempotent where their destination allows it, so running sync twice sends nothing twice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._journal import repair_journal
from trainbus.bus._runtime import replay
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport
from trainbus.orchestrator.registry import build_sinks, import_object
from trainbus.orchestrator.rundir import RunDir, RunRecord, SinkRecord, find_run_dir

__all__ = ["rebuild_sinks", "sync_run"]

log = structlog.get_logger(__name__)


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
    cls = import_object(entry.factory, field=f"sink {entry.name!r}")
    sink = cls()
    if not isinstance(sink, Sink):
        raise ConfigurationError(f"sink {entry.name!r} ({entry.factory}) is not a Sink")
    return sink


def rebuild_sinks(
    run_dir: RunDir,
    *,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
) -> list[Sink]:
    """The sinks ``run.json`` lists (or the ``only`` ones among them), ready for a replay."""
    record = run_dir.read_record()
    environ = dict(os.environ) if env is None else env
    known = [entry.name for entry in record.sinks]
    for name in only or ():
        if name not in known:
            raise ConfigurationError(
                f"--sink {name!r} is not a sink of run {record.run_id}; its sinks are {known!r}"
            )
    chosen = [e for e in record.sinks if not only or e.name in only]
    return [_rebuild(entry, record, run_dir, environ) for entry in chosen]


async def sync_run(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    sinks: Sequence[Sink] | None = None,
    deadline: float = math.inf,
    force: bool = False,
) -> dict[str, SinkReport]:
    """Replay ``path``'s journal into its sinks; returns each sink's report.

    ``sinks`` replaces the recorded ones (for user sinks that cannot be rebuilt by name). A run
    whose process is still alive is refused unless ``force``: its own sinks are delivering.
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
    chosen = list(sinks) if sinks is not None else rebuild_sinks(run_dir, env=env, only=only)
    repair = repair_journal(run_dir.journal_path)
    if repair.torn_tail is not None:
        log.warning(
            "journal_torn_tail_truncated",
            run_dir=str(run_dir.path),
            last_seq=repair.last_seq,
            dropped_bytes=repair.torn_tail.dropped_bytes,
        )
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
