"""Closing a run whose training process died without closing it (SIGKILL, a lost machine).

Such a run's ``run.json`` still says ``running`` and its journal ends without ``RunFinished``, so
a replay would leave every tracker run open (MLflow: ``RUNNING``) however complete its metrics.
``close_dead_run`` writes the ending the process could not: a ``RunFinished(status="killed")``
appended to the journal (the next ``seq``, so each sink's cursor delivers it exactly once, like any
other event) and ``killed`` in ``run.json``. ``trainbus sync`` calls it before replaying.
"""

from __future__ import annotations

import time

from trainbus.bus._events import Event, RunFinished, RunStarted
from trainbus.bus._journal import JournalReader
from trainbus.bus._segmented import open_journal
from trainbus.orchestrator.rundir import RunDir

__all__ = ["DEAD_RUN_ERROR", "close_dead_run"]

DEAD_RUN_ERROR = "the training process ended without closing the run"


def _ending(run_dir: RunDir) -> tuple[Event | None, RunFinished | None]:
    """The journal's last event, and the ``RunFinished`` closing its last ``RunStarted``."""
    last: Event | None = None
    finished: RunFinished | None = None
    for event in JournalReader(run_dir.journal_path).read_from(0):
        last = event
        if isinstance(event, RunStarted):
            finished = None
        elif isinstance(event, RunFinished):
            finished = event
    return last, finished


def close_dead_run(run_dir: RunDir) -> bool:
    """End a ``running`` run whose processes are gone as ``killed``; ``False`` if there is none.

    A journal that already holds the ending (the process died after publishing it) only gets
    ``run.json`` brought in line with it.
    """
    record = run_dir.read_record()
    if record.status != "running" or record.is_live() or not run_dir.journal_path.exists():
        return False
    writer = open_journal(run_dir.journal_path)  # cuts a torn tail first
    try:
        last, finished = _ending(run_dir)
        if last is None:
            return False
        if finished is None:
            finished = RunFinished(
                run_id=last.run_id,
                seq=last.seq + 1,
                time=time.time(),
                global_step=last.global_step,
                epoch=last.epoch,
                rank=last.rank,
                status="killed",
                error=DEAD_RUN_ERROR,
            )
            writer.append([finished])
    finally:
        writer.close()
    record.status = finished.status
    record.error = record.error or finished.error
    record.finished = finished.time
    run_dir.write_record(record)
    return True
