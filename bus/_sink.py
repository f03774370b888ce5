"""The sink interface: what a destination for events implements.

A sink is an object with three coroutines: ``open()`` (all I/O starts here, never in ``__init__``),
``write(batch)`` (deliver a batch; return normally only once the remote end has accepted it) and
``close()`` (flush whatever the sink buffers itself). The sink runtime (``trainbus.bus._runtime``)
owns everything else: the bounded queue, batching by count and latency, retries with backoff, the
cursor into the journal, catch-up after an overflow, and isolation.

A custom sink in about twenty lines (``tests/bus/test_sink_example.py`` runs this one)::

    class CsvLosses(Sink):
        # Appends step,loss lines to a CSV file, every 10th step.

        name = "csv-losses"  # names the cursor file: keep it stable
        events = (Log,)  # subscribe by type; None means every event
        every = 10  # only events whose global_step % 10 == 0
        max_batch_latency = 5.0  # write at least every 5 s, or per 512 events

        def __init__(self, path: Path) -> None:
            self.path = path  # no I/O here: a sink is built before the run starts

        async def open(self) -> None:
            self.file = await anyio.open_file(self.path, "a")

        async def write(self, batch: Sequence[Event]) -> None:
            lines = [f"{e.global_step},{e.logs['loss']}\\n" for e in batch if "loss" in e.logs]
            await self.file.writelines(lines)
            await self.file.flush()  # return only once the data is where it belongs

        async def close(self) -> None:
            await self.file.aclose()

Pass it to the bus (``Bus(..., sinks=[CsvLosses(path)])``) or, through the orchestrator, to
``report_to``. ``write`` is never called concurrently with itself, and always in ``seq`` order.
The close deadline cancels a ``write`` that hangs; one that blocks in a worker thread should use
``anyio.to_thread.run_sync(..., abandon_on_cancel=True)`` or its client's own timeout, since a
thread cannot be cancelled. A ``write`` or ``close`` that blocks the loop itself (``time.sleep``,
a synchronous client) cannot be cancelled either: the bus's watchdog names it in a warning, the
journal goes on without the loop, and ``train()`` stops waiting for it at the close deadline.

``write`` must be idempotent where the destination allows it: after a crash between the remote
accepting a batch and the cursor being written, the runtime delivers that batch again
(at-least-once). Raise ``RetryableSinkError`` for failures that may pass and
``PermanentSinkError`` for those that never will; see ``trainbus.bus._errors``.

One bad point must not cost a batch. A sink that knows its destination's rules checks each
point before sending and hands those that break them to ``quarantine()`` instead. When the
destination still refuses a batch permanently, the runtime asks ``split(batch, error)`` for its
independent parts and sends each on its own, recursively, until only the refused points are
left; those are quarantined (counted, named in the report and ``trainbus show``, kept in the
journal) and everything else is delivered. The default split halves the batch by event.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainbus.bus._errors import PermanentSinkError
from trainbus.bus._events import RUN_EVENT_TYPES, Event, EventBase, HistogramSource
from trainbus.bus._stats import QuarantinedPoint

__all__ = ["Sink"]


class Sink:
    """Base class of every sink. Override ``write``; ``open`` and ``close`` are optional."""

    name: str = ""
    """Stable identifier: names the sink's cursor file and log lines (default: the class name)."""

    events: tuple[type[EventBase], ...] | None = None
    """Event types this sink receives; ``None`` means every type."""

    every: int = 1
    """Deliver step-bearing events only when ``global_step % every == 0``. Run-level events
    (``RunStarted``, ``RunFinished``, ``Artifact``) always pass. Deterministic, so a replay
    from the journal filters exactly as the live run did."""

    max_batch_size: int = 512
    """Most events handed to one ``write`` call."""

    max_batch_latency: float = 1.0
    """Longest time (seconds) an event waits for its batch to fill before it is written anyway."""

    world_rank_zero_only: bool = True
    """Run this sink on global rank zero only (remote trackers); ``False`` for per-rank files."""

    wants_final_model: bool = False
    """Set (on the class, or per instance in ``__init__``) by a sink that uploads the final model,
    as transformers' integrations do at train end (``WANDB_LOG_MODEL``, ``HF_DVCLIVE_LOG_MODEL``,
    ...): when any sink of the run sets it, the trainer writes the trained model at the end of
    training and publishes ``Artifact(kind="model")`` for it before ``RunFinished``."""

    wants_histograms: frozenset[HistogramSource] = frozenset()
    """``"gradients"`` and/or ``"parameters"``, set (per instance) by a sink that logs the model's
    tensors as histograms, as ``wandb.watch`` does (``WANDB_WATCH``): when any sink of the run
    asks, the trainer publishes ``Histograms`` events of those every ``max(100, logging_steps)``
    optimizer steps, computed on the device; with none asking, it computes nothing."""

    prefers_sink_process: bool = False
    """Set (on the class, or per instance) by a sink whose per-point work is heavy Python (a
    vendor SDK that encodes, writes and bookkeeps every point itself): in the training process
    that work holds the GIL the training thread needs. Unless ``TRAINBUS_SINK_PROCESS`` (or
    ``Orchestrator(sink_process=)``) says otherwise, a ``report_to`` sink that sets it runs in
    the sink process, which follows the journal; the others stay in the training process."""

    sdk_module: str | None = None
    """The vendor SDK the sink imports in ``open()`` (``"wandb"``), or ``None``. Choosing the
    sink by ``report_to`` imports it first, so an SDK that is installed but does not import is
    one error before training (named explicitly) or one warning (under ``"all"``)."""

    @property
    def sink_name(self) -> str:
        """The name used for cursors and logs."""
        return self.name or type(self).__name__

    def accepts(self, event: EventBase) -> bool:
        """Whether this sink wants ``event``; the runtime calls it once per event."""
        if self.events is not None and not isinstance(event, self.events):
            return False
        if self.every > 1 and not isinstance(event, RUN_EVENT_TYPES):
            return event.global_step % self.every == 0
        return True

    async def open(self) -> None:
        """Connect, create remote runs, open files. Called once before the first ``write``."""

    async def write(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch`` (in ``seq`` order); return only after the destination accepted it."""
        raise NotImplementedError(f"{type(self).__name__} must implement write(batch)")

    async def close(self) -> None:
        """Flush and release resources. Called once, after the last ``write``."""

    def durable_seq(self) -> int | None:
        """The last seq the destination holds durably, where that lags what ``write`` returned.

        ``write`` returning means the destination accepted the batch, and for most sinks that is
        for good (a server's answer, a file written). A vendor SDK may accept points into a
        buffer of its own that a crash of this process loses (W&B's service keeps its offline
        file's last block in memory); such a sink returns here how far the destination has them
        for good, and the runtime keeps the sink's cursor file there, so that the next run or
        ``trainbus sync`` delivers the rest again. ``None`` (the default): everything
        acknowledged is durable. Called after each acknowledged batch and after ``close``.
        """
        return None

    def split(self, batch: Sequence[Event], error: PermanentSinkError) -> Sequence[Sequence[Event]]:
        """Independent parts of ``batch``, which the destination refused with ``error``.

        The runtime sends each part on its own (in order) and splits a refused part again, so
        only the points the destination refuses end up quarantined. Return no parts when the
        error is not about the points (a deleted run, a revoked token), or when ``batch`` cannot
        be split further: then the whole of it is quarantined. The default halves the batch by
        event, so finding one bad event among ``n`` takes about ``2 * log2(n)`` requests. A sink
        may split one event into several with the same ``seq`` (one per metric, say); ``write``
        then sees those parts and must not treat one as the whole event.
        """
        if len(batch) < 2:
            return ()
        middle = len(batch) // 2
        return (batch[:middle], batch[middle:])

    def quarantine(self, event: EventBase, reason: str, *, key: str | None = None) -> None:
        """Hold back one point of ``event`` that the destination's rules refuse.

        Call it from ``write`` instead of sending the point; the runtime counts and names it once
        the batch is acknowledged. ``key`` names the metric or param; ``reason`` the rule, in a
        few words.
        """
        held: list[QuarantinedPoint] = self.__dict__.setdefault("_trainbus_quarantined", [])
        held.append(QuarantinedPoint(seq=event.seq, key=key, reason=reason))

    def take_quarantined(self) -> list[QuarantinedPoint]:
        """The points ``quarantine()`` held back since the last call (the runtime's side)."""
        held: list[QuarantinedPoint] = self.__dict__.pop("_trainbus_quarantined", [])
        return held
