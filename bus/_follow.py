"""Sinks fed from a journal that another process is still writing.

This is how sinks run in a process of their own (``trainbus.orchestrator.sink_host``): the training
process only journals, and this process follows the journal file, hands what is new to each
sink's runner (the same runner, batching, retries and cursors as in the training process) and,
once told the writer is done, delivers the rest within a deadline. A sink's Python then runs on
another core, under another GIL: however much work it does per event, it takes none of it from
the training thread.

Latency: the training process writes its journal every ``wake_interval`` of its bus (100 ms), and
this side looks every ``interval``; a sink batches for longer than both anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import anyio

from trainbus.bus._cursor import CursorStore
from trainbus.bus._events import Event
from trainbus.bus._journal import Record, SeqIndex, decode_record, read_appended
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._runtime import DEFAULT_QUEUE_SIZE, SinkRunner
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport, SinkStats

__all__ = ["LiveJournal", "follow"]


class LiveJournal:
    """A journal another process appends to, read as far as its records are whole.

    It is the runners' ``JournalSource``: ``last_seq`` only ever covers records already read,
    so a runner catching up from the file never reads past what ``poll`` will hand out next.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.last_seq = -1
        self._offset = 0
        self._index = SeqIndex()

    def poll(self) -> list[Event]:
        """The events appended since the last call (none while the file does not exist yet)."""
        return [decode_record(self.path, record) for record in self._read()]

    def skip_existing(self) -> None:
        """Move past what the journal holds now without decoding it (the runners catch up on it
        from their cursors), a bounded chunk at a time."""
        while self._read():
            pass

    def _read(self) -> list[Record]:
        if not self.path.exists():
            return []
        records, self._offset = read_appended(self.path, self._offset)
        index = self._index
        for record in records:
            if record.seq >= index.due:
                index.add(record.seq, record.offset)
        if records:
            self.last_seq = records[-1].seq
        return records

    def offset_for(self, seq: int) -> int:
        """A record boundary at or before ``seq``'s record (where a catching-up runner starts)."""
        return self._index.offset_for(seq)


async def follow(
    journal_path: str | os.PathLike[str],
    sinks: list[Sink],
    *,
    cursor_dir: str | os.PathLike[str] | None,
    done: anyio.Event,
    flush: anyio.Event | None = None,
    deadline: float = math.inf,
    interval: float = 0.1,
    policy: RetryPolicy | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    on_stats: Callable[[list[SinkStats]], None] | None = None,
) -> dict[str, SinkReport]:
    """Deliver the journal into ``sinks`` as it grows, until ``done`` is set; then the rest.

    Each sink starts from its cursor, so whatever an earlier process left undelivered comes first.
    Once ``flush`` is set (the writer's ``Bus.begin_flush``: the run's end is near) the journal is
    read at once and the sinks send what they hold without waiting for their batch timers
    (``SinkRunner.flush_now``); whoever sets ``done`` sets ``flush`` too, or ``done`` is seen
    within ``interval``. After ``done`` the journal is read to its end once more and the sinks
    get ``deadline`` seconds to deliver it; what they do not is in their reports and stays for
    ``trainbus sync``.
    ``on_stats`` gets the sinks' ``stats()`` after every look at the journal and once more at
    the end (the sink process publishes them to the training process).
    """
    source = LiveJournal(journal_path)
    source.skip_existing()
    cursors = CursorStore(cursor_dir)
    runners = [SinkRunner(s, source, cursors, policy=policy, queue_size=queue_size) for s in sinks]
    async with anyio.create_task_group() as tg:
        for runner in runners:
            tg.start_soon(runner.run, name=f"trainbus sink {runner.name}")
        while not done.is_set():
            _offer(runners, source.poll())
            if flush is not None and flush.is_set():
                flush = None
                for runner in runners:
                    runner.flush_now()
            if on_stats is not None:
                on_stats([runner.stats() for runner in runners])
            with anyio.move_on_after(interval):
                await (done if flush is None else flush).wait()
        _offer(runners, source.poll())
        for runner in runners:
            runner.begin_close(deadline)
    if on_stats is not None:
        on_stats([runner.stats() for runner in runners])
    return {r.name: r.report for r in runners if r.report is not None}


def _offer(runners: list[SinkRunner], events: list[Event]) -> None:
    if events:
        for runner in runners:
            runner.offer(events)
