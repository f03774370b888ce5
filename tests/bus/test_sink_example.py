"""The custom sink from bus.sink's docstring works as written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from trainbus.bus import Bus, Event, Log, Sink, StepEnd


class CsvLosses(Sink):
    """Appends ``step,loss`` lines to a CSV file, every 10th step."""

    name = "csv-losses"  # names the cursor file: keep it stable
    events = (Log,)  # subscribe by type; None means every event
    every = 10  # only events whose global_step % 10 == 0
    max_batch_latency = 5.0  # write at least every 5 s, or per 512 events

    def __init__(self, path: Path) -> None:
        self.path = path  # no I/O here: a sink is built before the run starts

    async def open(self) -> None:
        self.file: Any = await anyio.open_file(self.path, "a")

    async def write(self, batch: Sequence[Event]) -> None:
        lines = [f"{e.global_step},{e.logs['loss']}\n" for e in batch if "loss" in e.logs]  # type: ignore[union-attr]
        await self.file.writelines(lines)
        await self.file.flush()  # return only once the data is where it belongs

    async def close(self) -> None:
        await self.file.aclose()


async def test_docstring_sink_writes_its_csv(tmp_path: Path) -> None:
    """The twenty-line example sink receives the filtered Log events and writes them."""
    out = tmp_path / "losses.csv"
    with anyio.fail_after(10):
        async with Bus(run_id="r", journal_path=tmp_path / "j.tbj", sinks=[CsvLosses(out)]) as bus:
            for step in range(1, 31):
                bus.emit(StepEnd, global_step=step)
                bus.emit(Log, global_step=step, logs={"loss": 1 / step})
    assert out.read_text().splitlines() == ["10,0.1", "20,0.05", "30,0.03333333333333333"]
