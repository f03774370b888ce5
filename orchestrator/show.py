"""``trainbus show RUN_DIR``: what a run did, read from its journal, cursors and ``run.json``.

Works on a live run, a finished one or one killed mid-step: the journal reader stops before a torn
tail, so the summary covers every event that was durably written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec

from trainbus.bus._cursor import CursorStore
from trainbus.bus._events import Evaluate, Event, Log, RunFinished, RunStarted, TrainBegin
from trainbus.bus._journal import JournalReader
from trainbus.bus._quarantine import QuarantineLog
from trainbus.bus._stats import QuarantinedPoint
from trainbus.orchestrator.rundir import RunDir, RunRecord

__all__ = ["RunSummary", "SinkState", "format_summary", "summarize", "summarize_events"]


class SinkState(msgspec.Struct, frozen=True, kw_only=True):
    """How far one sink's destination got: its cursor against the journal's end, and the points
    it will never send (``quarantined``, the first of them named), which the journal keeps."""

    name: str
    acknowledged_seq: int
    behind: int
    quarantined: int = 0
    quarantined_points: list[QuarantinedPoint] = []


class RunSummary(msgspec.Struct, kw_only=True):
    """Everything ``show`` prints, also available as JSON (``--json``)."""

    run_id: str = ""
    run_name: str = ""
    status: str = "unknown"
    events: int = 0
    last_seq: int = -1
    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    last_train: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    best: dict[str, Any] = {}
    metric_for_best_model: str | None = None
    sinks: list[SinkState] = []
    torn_tail_bytes: int = 0
    rank: int = 0
    world_size: int = 1
    journal_events: str = "full"
    """What this rank's journal keeps (``full``; ``errors`` or ``none`` on a rank other than
    world rank zero): the events above are only what it kept."""


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _better(name: str, new: float, old: float, greater: bool | None, best_key: str | None) -> bool:
    """Hugging Face's rule: ``greater_is_better`` for the best-model metric, else by name."""
    higher = greater if greater is not None and name == best_key else not name.endswith("loss")
    return new > old if higher else new < old


def _eval_key(metric: str | None) -> str | None:
    if metric is None:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def summarize_events(events: Iterable[Event]) -> RunSummary:
    """Fold a run's events into a summary (pure: no files involved)."""
    out = RunSummary()
    greater: bool | None = None
    for event in events:
        out.events += 1
        out.last_seq = event.seq
        out.run_id = event.run_id
        out.global_step = max(out.global_step, event.global_step)
        out.epoch = max(out.epoch, event.epoch)
        match event:
            case RunStarted():
                out.run_name = event.run_name
                metric = event.config.get("metric_for_best_model")
                out.metric_for_best_model = metric if isinstance(metric, str) else None
                flag = event.config.get("greater_is_better")
                greater = flag if isinstance(flag, bool) else None
            case TrainBegin():
                out.max_steps = event.max_steps
            case Log() if "loss" in event.logs:
                out.last_train = {"step": event.global_step, **event.logs}
            case Evaluate():
                out.last_eval = {"step": event.global_step, **event.metrics}
                for key, raw in event.metrics.items():
                    value = _numeric(raw)
                    if value is None or key.endswith(("_runtime", "_per_second")) or key == "epoch":
                        continue
                    best = out.best.get(key)
                    best_key = _eval_key(out.metric_for_best_model)
                    if best is None or _better(key, value, best["value"], greater, best_key):
                        out.best[key] = {"value": value, "step": event.global_step}
            case RunFinished():
                # evaluate() after train() finishes "completed"; keep the training's "stopped".
                if out.status in ("unknown", "completed"):
                    out.status = event.status
            case _:
                pass
    return out


def summarize(run_dir: RunDir) -> RunSummary:
    """Summarise a run directory: journal, ``run.json`` and every sink's cursor."""
    record: RunRecord = run_dir.read_record()
    reader = JournalReader(run_dir.journal_path)
    summary = (
        summarize_events(reader.read_from(0)) if run_dir.journal_path.exists() else RunSummary()
    )
    summary.run_id = summary.run_id or record.run_id
    summary.run_name = summary.run_name or record.run_name
    if record.status == "running":
        summary.status = (
            f"running (pid {record.pid})" if record.is_live() else "killed (process gone)"
        )
    elif summary.status == "unknown" or record.status != "completed":
        summary.status = record.status
    summary.torn_tail_bytes = reader.torn_tail.dropped_bytes if reader.torn_tail else 0
    summary.rank, summary.world_size = record.rank, record.world_size
    summary.journal_events = record.journal_events
    cursors = CursorStore(run_dir.cursor_dir)
    summary.sinks = []
    for entry in record.sinks:
        acked = cursors.read(entry.name)
        held = QuarantineLog.for_sink(cursors, entry.name)
        summary.sinks.append(
            SinkState(
                name=entry.name,
                acknowledged_seq=acked,
                behind=max(0, summary.last_seq - acked),
                quarantined=held.count,
                quarantined_points=list(held.points),
            )
        )
    return summary


_SHOWN = 10
"""Quarantined points listed per sink; ``--json`` has every one the run directory names."""


def _point(point: QuarantinedPoint) -> str:
    key = point.key if point.key is None or len(point.key) <= 60 else point.key[:57] + "..."
    where = f"seq {point.seq}" + (f" {key!r}" if key is not None else "")
    return f"{where}: {point.reason[:160]}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics(values: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k != "step") or "-"


def format_summary(summary: RunSummary, run_dir: RunDir) -> str:
    """The human-readable report ``trainbus show`` prints."""
    steps = (
        f"{summary.global_step}/{summary.max_steps}"
        if summary.max_steps
        else str(summary.global_step)
    )
    lines = [
        f"run        {summary.run_name} ({summary.run_id})",
        f"directory  {run_dir.path}",
        f"status     {summary.status}",
        f"steps      {steps}   epoch {summary.epoch:.2f}   events {summary.events}",
        f"train      step {summary.last_train.get('step', '-')}: {_metrics(summary.last_train)}",
        f"eval       step {summary.last_eval.get('step', '-')}: {_metrics(summary.last_eval)}",
    ]
    if summary.best:
        best = "  ".join(f"{k}={_fmt(v['value'])}@{v['step']}" for k, v in summary.best.items())
        lines.append(f"best       {best}")
    if summary.world_size > 1:
        lines.append(f"rank       {summary.rank} of {summary.world_size}")
    if summary.journal_events != "full":
        kept = "its own failures only" if summary.journal_events == "errors" else "no journal"
        lines.append(
            f"journal    {kept} (TRAINBUS_RANK_JOURNAL={summary.journal_events}): "
            "world rank zero's run holds the job's events"
        )
    if summary.torn_tail_bytes:
        lines.append(f"journal    torn tail of {summary.torn_tail_bytes} bytes (ignored)")
    lines.append("sinks" if summary.sinks else "sinks      none")
    for sink in summary.sinks:
        state = (
            "up to date" if sink.behind == 0 else f"{sink.behind} journal events past its cursor"
        )
        lines.append(f"  {sink.name:<20} acknowledged seq {sink.acknowledged_seq:<8} {state}")
        if sink.quarantined:
            lines.append(
                f"  {'':<20} {sink.quarantined} point{'' if sink.quarantined == 1 else 's'} "
                "quarantined (refused by the destination, kept in the journal):"
            )
            lines.extend(f"  {'':<22}{_point(p)}" for p in sink.quarantined_points[:_SHOWN])
            if sink.quarantined > _SHOWN:
                lines.append(f"  {'':<22}... and {sink.quarantined - _SHOWN} more")
    if any(s.behind for s in summary.sinks):
        lines.append(f"run 'trainbus sync {run_dir.path}' to deliver the rest")
    return "\n".join(lines)
