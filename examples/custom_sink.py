"""A user sink: append each training loss and evaluation to a JSON Lines file.

Run it with the demo task::

    trainbus train examples/digits.toml   # after adding  sinks = ["examples.custom_sink:JsonLines"]

or from Python: ``Orchestrator(output_dir=..., sinks=[JsonLines("metrics.jsonl")])``.

The sink only says *what* to do with a batch. Batching, retries, the cursor into the journal and
catching up after a crash are the runtime's job. ``write`` is idempotent: it skips events at or
below the highest ``seq`` already in the file, so a replay by ``trainbus sync`` never writes a
line twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import anyio

from trainbus import Sink
from trainbus.bus import Evaluate, Event, Log

__all__ = ["JsonLines"]


class JsonLines(Sink):
    """One JSON object a line per ``Log`` and ``Evaluate``: ``{"seq", "step", ...metrics}``."""

    name = "jsonlines"
    events = (Log, Evaluate)
    max_batch_latency = 0.5

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        # No I/O here: the file is opened in open(), on the event loop.
        self.path = Path(path or os.environ.get("TRAINBUS_JSONL", "metrics.jsonl"))
        self._last_seq = -1

    async def open(self) -> None:
        self._last_seq = await anyio.to_thread.run_sync(self._read_last_seq)

    def _read_last_seq(self) -> int:
        if not self.path.exists():
            return -1
        last = -1
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line)["seq"]))
                except (ValueError, KeyError):
                    continue  # a torn last line from a crash: the replay rewrites it
        return last

    async def write(self, batch: Sequence[Event]) -> None:
        lines = []
        for event in batch:
            if event.seq <= self._last_seq:
                continue
            values = event.logs if isinstance(event, Log) else getattr(event, "metrics", {})
            lines.append(json.dumps({"seq": event.seq, "step": event.global_step, **values}))
        if lines:
            await anyio.to_thread.run_sync(self._append, lines)
            self._last_seq = batch[-1].seq

    def _append(self, lines: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
