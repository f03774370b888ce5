"""What the TensorBoard sink's event-file writer costs per scalar, beside TensorBoard's own
(question 4 of ``bench_sinks``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from trainbus.bus._events import Log
from trainbus.sinks.tensorboard import TensorBoardSink

__all__ = ["tb_costs"]


def tb_costs(events: int, root: Path) -> list[dict[str, Any]]:
    """Python time per scalar: the minimal writer, TensorBoard's own, and the whole sink."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter as TBWriter

    from trainbus.sinks._tfrecord import EventFileWriter, encode_scalars

    scalars = [("train/loss", 0.5), ("train/grad_norm", 1.5), ("train/learning_rate", 1e-4)]
    scalars.append(("train/epoch", 0.25))
    rows = []

    minimal = EventFileWriter(root / "tb-min")
    began = time.perf_counter()
    for step in range(events):
        minimal.write(encode_scalars(1.0 + step, step, scalars))
    minimal.close()
    rows.append(_cost_row("trainbus minimal writer (one event per log)", began, events, scalars))

    minimal = EventFileWriter(root / "tb-min1")
    began = time.perf_counter()
    for step in range(events):
        for tag, value in scalars:
            minimal.write(encode_scalars(1.0 + step, step, [(tag, value)]))
    minimal.close()
    rows.append(_cost_row("trainbus minimal writer (one event per scalar)", began, events, scalars))

    import trainbus.sinks._tfrecord as tfrecord

    native = tfrecord.crc32c
    tfrecord.crc32c = tfrecord.py_crc32c  # type: ignore[misc]  # measure the fallback too
    try:
        minimal = EventFileWriter(root / "tb-py")
        began = time.perf_counter()
        for step in range(events):
            minimal.write(encode_scalars(1.0 + step, step, scalars))
        minimal.close()
        rows.append(_cost_row("trainbus minimal writer, pure-Python CRC", began, events, scalars))
    finally:
        tfrecord.crc32c = native  # type: ignore[misc]

    standard = TBWriter(str(root / "tb-std"))
    began = time.perf_counter()
    for step in range(events):
        for tag, value in scalars:
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
            )
            standard.add_event(event_pb2.Event(summary=summary, wall_time=1.0 + step, step=step))
    standard.close()
    rows.append(_cost_row("tensorboard EventFileWriter + protobuf", began, events, scalars))

    sink = TensorBoardSink(run_dir=root / "tb-sink", logging_dir=root / "tb-sink")
    batch = [
        Log(
            run_id="r",
            seq=i,
            time=1.0 + i,
            global_step=i,
            logs=dict(loss=0.5, grad_norm=1.5, learning_rate=1e-4, epoch=0.25),
        )
        for i in range(events)
    ]

    async def write_all() -> None:
        await sink.open()
        for start in range(0, events, 512):
            await sink.write(batch[start : start + 512])
        await sink.close()

    began = time.perf_counter()
    anyio.run(write_all)
    rows.append(
        _cost_row("TensorBoardSink.write (rewrite + encode + write)", began, events, scalars)
    )
    return rows


def _cost_row(name: str, began: float, events: int, scalars: Sequence[Any]) -> dict[str, Any]:
    seconds = time.perf_counter() - began
    return {"writer": name, "us_per_scalar": seconds / (events * len(scalars)) * 1e6}
