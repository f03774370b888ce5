"""The ``Orchestrator``: the loop side of one run (bus, journal, sinks) and its run directory.

Training runs in a worker thread; the orchestrator's event loop (the host application's, or the
blocking portal ``Trainer.train()`` starts for plain scripts) runs the bus and every sink task, so a
slow sink never stalls a step and the host's other tasks keep running::

    async with anyio.create_task_group() as tg:
        async with Orchestrator(output_dir="out", report_to=["tensorboard"]) as orch:
            tg.start_soon(watch, orch.events(Log))   # async for event in ...: ends with the run
            result = await orch.train(trainer)

Everything that can fail on user input (``report_to`` names, a writable ``output_dir``) is checked
in ``__aenter__`` before the run directory is created.

An ``Orchestrator`` is also a trainer's launcher (``open_run``, see ``trainbus.trainer._launcher``):
``orch.train(trainer)`` hands it to ``trainer.train_async`` and the trainer trains on the open bus;
a trainer built with ``Trainer(launcher=orch)`` (as ``trainbus train`` does) opens this run for each
call and closes it after, so ``evaluate()`` after ``train()`` continues the same run.

Under ``torchrun`` each rank has an orchestrator of its own, and the job has one run id: world
rank zero's, sent to the others over the process group (``for_trainer`` joins the trainer's
group first; a bare ``Orchestrator`` agrees over a group already initialised, else warns). A new
launch is a new run; ``run_id=`` or ``$TRAINBUS_RUN_ID`` continues one on purpose. World rank
zero journals every event; the other ranks journal only their failures by default
(``rank_journal``, ``$TRAINBUS_RANK_JOURNAL``: see ``trainbus.orchestrator._rank_journal``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import structlog

from trainbus.bus import _world
from trainbus.bus._bus import Bus
from trainbus.bus._env import SINK_PROCESS_VARIABLE, env_flag, env_int, env_str
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import EventBase, RunFinished
from trainbus.bus._metrics import BusMetrics
from trainbus.bus._numbers import check_seconds
from trainbus.bus._run_context import RunContext
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport
from trainbus.bus._stream import Subscription
from trainbus.bus._worker import run_in_worker_thread
from trainbus.orchestrator._live import MetricsStream, check_interval, run_metrics
from trainbus.orchestrator._rank_journal import RankJournal, journal_filter, rank_journal_from
from trainbus.orchestrator.config import check_writable_dir
from trainbus.orchestrator.logging import configure_logging
from trainbus.orchestrator.metrics import (
    METRICS_ADDR_VARIABLE,
    METRICS_PORT_VARIABLE,
    MetricsServer,
    serve_prometheus,
)
from trainbus.orchestrator.registry import IntegrationChoice, build_sinks, explain_report_to
from trainbus.orchestrator.rundir import (
    RecordStatus,
    RunDir,
    RunRecord,
    SinkRecord,
    check_run_id,
    proposed_run_id,
    rendezvous_id,
)
from trainbus.orchestrator.sink_host import SinkHost

__all__ = ["Orchestrator", "warm_up"]

T = TypeVar("T")
log = structlog.get_logger(__name__)

_LAZY_TORCH_MODULES = ("torch._dynamo", "torch.distributed.tensor")


def _nothing() -> None:
    """Cancelling work that was given nothing to call still waits for the thread."""


def warm_up() -> None:
    """Import what torch otherwise imports on the first optimizer and clipping step.

    Those first-time imports hold the GIL for 100-300 ms at a time, whichever thread runs them,
    so a host service's loop stalls once when its first training starts. Call this at startup,
    before serving, and the stall happens while nothing is waiting.
    """
    for name in _LAZY_TORCH_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a torch build without these parts never imports them later either
            continue


async def _tell_journal_complete(bus: Bus, host: SinkHost) -> None:
    """Journal what is left and tell the sink process the run is whole, before the bus closes:
    its final delivery then runs beside this process's sinks' instead of after them. A failed
    drain is the bus's close's to report; the sink process is then told by ``host.finish``."""
    try:
        with anyio.CancelScope(shield=True):
            await bus.drain()
    except Exception:
        return
    host.journal_complete()


def _factory_of(sink: Sink) -> str | None:
    """``module:Class`` of a sink class that can be rebuilt without arguments, for ``sync``."""
    cls = type(sink)
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


class Orchestrator:
    """Owns a run's bus, journal, sink tasks and run directory for one ``async with``.

    ``run_id`` continues that run (default: ``$TRAINBUS_RUN_ID``, else a fresh id; under
    ``torchrun`` world rank zero's). ``rank_journal`` is what a rank other than world rank zero
    journals: ``"errors"`` (default, or ``$TRAINBUS_RANK_JOURNAL``), ``"none"`` or ``"full"``.
    ``metrics_port`` serves the bus's metrics to Prometheus while the run is open (default:
    ``$TRAINBUS_METRICS_PORT``, else none; 0 picks a free port, see ``metrics_url``) on
    ``metrics_addr`` (default ``$TRAINBUS_METRICS_ADDR``, else ``127.0.0.1``); see
    ``trainbus.orchestrator.metrics`` and ``docs/observability.md``.
    """

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike[str],
        run_name: str | None = None,
        report_to: str | Sequence[str] | None = "all",
        sinks: Sequence[Sink] = (),
        env: Mapping[str, str] | None = None,
        run_id: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        flush_timeout: float = 30.0,
        sink_process: bool | None = None,
        rank_journal: RankJournal | None = None,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
    ) -> None:
        self.flush_timeout = check_seconds("flush_timeout", flush_timeout)
        """Seconds the sinks get at close; what they have not delivered by then waits for sync."""
        self.output_dir = Path(output_dir)
        self.env: Mapping[str, str] = dict(os.environ) if env is None else env
        # One source with the trainer's TrainingArguments: the process group, then RANK/WORLD_SIZE.
        self.rank = _world.world_rank() if rank is None else rank
        self.world_size = _world.world_size() if world_size is None else world_size
        self.run_id = run_id if run_id is not None else self._job_run_id()
        check_run_id(self.run_id)
        self.run_name = run_name or self.run_id
        self.rank_journal = rank_journal_from(self.env, rank_journal)
        """What this rank's journal keeps when it is not world rank zero
        (``trainbus.orchestrator._rank_journal``)."""
        self.run_dir = RunDir.for_run(
            self.output_dir, self.run_id, rank=self.rank, world_size=self.world_size
        )
        self._report_to = report_to
        self._extra_sinks = list(sinks)
        self._status_watch: Subscription | None = None
        self._stack: AsyncExitStack | None = None
        self._bus: Bus | None = None
        self._record: RunRecord | None = None
        if sink_process is None and env_str(self.env, SINK_PROCESS_VARIABLE) is not None:
            sink_process = env_flag(self.env, SINK_PROCESS_VARIABLE)
        self.sink_process = sink_process
        """Where the ``report_to`` sinks run: ``True`` all in the sink process (see
        ``trainbus.orchestrator.sink_host``), ``False`` all in the training process, ``None``
        (the default) each where it prefers (``Sink.prefers_sink_process``)."""
        self._host: SinkHost | None = None
        self.metrics_port = (
            env_int(self.env, METRICS_PORT_VARIABLE) if metrics_port is None else metrics_port
        )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(
                f"metrics_port must be a TCP port between 0 and 65535, got {self.metrics_port}."
            )
        self.metrics_addr = metrics_addr or env_str(self.env, METRICS_ADDR_VARIABLE) or "127.0.0.1"
        self._metrics_server: MetricsServer | None = None
        self._last_bus: Bus | None = None  # kept after the close: its figures stay readable
        self._moved: list[str] = []
        self._finished: anyio.Event | None = None
        self._choices: list[IntegrationChoice] = []
        """Every integration, picked or skipped and why (``_prepare``)."""

    def _job_run_id(self) -> str:
        """This orchestrator's run id when none was passed: ``$TRAINBUS_RUN_ID`` or a fresh one,
        world rank zero's when a process group is there to agree over (see ``for_trainer``)."""
        proposal = proposed_run_id(self.env)
        if self.world_size <= 1:
            return proposal
        from trainbus.trainer._run_identity import agree_run_id  # torch: only for a job of ranks

        agreed = agree_run_id(proposal)
        if agreed is None:
            log.warning(
                "run_id_not_shared",
                world_size=self.world_size,
                run_id=proposal,
                reason="no process group is initialised to agree on one run id for the job",
                hint="build it with Orchestrator.for_trainer(trainer), or pass run_id=",
            )
            return proposal
        return agreed

    @classmethod
    def for_trainer(cls, trainer: Any, **overrides: Any) -> Orchestrator:
        """An orchestrator set up from a trainer's ``TrainingArguments`` and ``sinks``.

        Rank and world size are the trainer's (``args.process_index``, ``args.world_size``), so
        the run directory and the rank-zero-only sinks agree with what the trainer does. Under
        ``torchrun``, unless ``run_id`` is among ``overrides``, the trainer joins its process
        group here and every rank takes world rank zero's run id
        (``trainbus.trainer._run_identity``): one run per job, a new one per launch.
        """
        args = trainer.args
        settings: dict[str, Any] = {
            "output_dir": args.output_dir,
            "run_name": args.run_name,
            "report_to": args.report_to,
            "sinks": list(trainer.sinks),
            "rank": args.process_index,
            "world_size": args.world_size,
        }
        settings.update(overrides)
        if settings.get("run_id") is None:
            from trainbus.trainer._run_identity import agree_run_id_for

            env = settings.get("env")
            proposal = proposed_run_id(os.environ if env is None else env)
            settings["run_id"] = agree_run_id_for(trainer, proposal)
        return cls(**settings)

    @property
    def bus(self) -> Bus:
        """The open bus; only valid inside ``async with``."""
        if self._bus is None:
            raise RuntimeError(
                "Orchestrator.bus is only available inside 'async with Orchestrator(...)'"
            )
        return self._bus

    # --- lifecycle ----------------------------------------------------------------------------

    def _prepare(self) -> tuple[list[Sink], RunRecord]:
        """Validate everything and build the sinks; creates nothing on disk."""
        self._choices = explain_report_to(self._report_to, self.env)
        names = [choice.name for choice in self._choices if choice.picked]
        check_writable_dir(self.output_dir, field="output_dir")
        built = build_sinks(
            names, self.env, run_dir=self.run_dir.path, run_name=self.run_name, world_rank=self.rank
        )
        sinks = [sink for _, sink in built]
        records = [SinkRecord(name=sink.sink_name, integration=name) for name, sink in built]
        for sink in self._extra_sinks:
            if self.rank == 0 or not sink.world_rank_zero_only:
                sinks.append(sink)
                records.append(SinkRecord(name=sink.sink_name, factory=_factory_of(sink)))
        seen: set[str] = set()
        for sink in sinks:
            if sink.sink_name in seen:
                raise ConfigurationError(
                    f"two sinks share the name {sink.sink_name!r}; give each sink a distinct 'name'"
                )
            seen.add(sink.sink_name)
        record = RunRecord(
            run_id=self.run_id,
            run_name=self.run_name,
            output_dir=str(self.output_dir),
            rank=self.rank,
            world_size=self.world_size,
            created=time.time(),
            sinks=records,
            pid=os.getpid(),
            host=socket.gethostname(),
            rendezvous_id=rendezvous_id(self.env) if self.world_size > 1 else None,
        )
        return sinks, record

    async def __aenter__(self) -> Orchestrator:
        configure_logging()
        sinks, self._record = self._prepare()
        continued = self.run_dir.record_path.is_file()
        if continued:
            # Continuing a run (evaluate() after train() on the same trainer): the journal goes
            # on from its last seq and the run keeps its original start time.
            self._record.created = self.run_dir.read_record().created
        self.run_dir.create()
        moved = self._moved_to_sink_process(sinks)
        journaled, keep = journal_filter(self.rank_journal, rank=self.rank, has_sinks=bool(sinks))
        self._record.journal_events = "full" if keep is None and journaled else self.rank_journal
        self.run_dir.write_record(self._record)
        bus = Bus(
            run_id=self.run_id,
            rank=self.rank,
            journal_path=self.run_dir.journal_path if journaled else None,
            journal_filter=keep,
            cursor_dir=self.run_dir.cursor_dir,
            sinks=[sink for sink in sinks if sink.sink_name not in moved],
            close_deadline=self.flush_timeout,
            # every sink counts, moved to the sink process or not: the trainer does the work
            context=RunContext.of_sinks(
                sinks,
                report_to=tuple(c.name for c in self._choices if c.picked),
                continued=continued,
            ),
        )
        self._finished = anyio.Event()
        self._last_bus, self._moved = bus, moved
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(bus)
            if moved:
                self._host = SinkHost.start(
                    self.run_dir, moved, env=self.env, deadline=self.flush_timeout
                )
                self._record.sink_pid = self._host.process.pid
                self.run_dir.write_record(self._record)
                bus.on_begin_flush(self._host.begin_flush)
            self._stack = stack.pop_all()
        self._bus = bus
        self._status_watch = bus.stream(RunFinished, max_buffer=8)
        if self.metrics_port is not None:
            try:  # last, so that nothing opened before it is left open when the port is taken
                self._metrics_server = serve_prometheus(
                    self.metrics_snapshot, port=self.metrics_port, addr=self.metrics_addr
                )
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        skipped = {c.name: c.reason for c in self._choices if not c.picked}
        log.info(
            "run_started",
            run_id=self.run_id,
            run_dir=str(self.run_dir.path),
            report_to=list(bus.context.report_to or ()),
            sinks=[s.sink_name for s in sinks],
            **({"skipped": skipped} if self._report_to in ("all", ["all"], None) else {}),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bus = self._bus
        try:
            if self._stack is not None:
                if bus is not None and self._host is not None:
                    await _tell_journal_complete(bus, self._host)
                # No shield here: the bus's task group must exit in the scope it was entered in;
                # the bus shields its own final drain.
                await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._stack = None
            self._bus = None
            reports = dict(bus.report or {}) if bus is not None else {}
            if self._host is not None:
                host, self._host = self._host, None
                with anyio.CancelScope(shield=True):  # the journal is complete: let it deliver
                    reports.update(await host.finish(self.flush_timeout))
            self._report_backlog(reports)
            status = await self._final_status(exc)
            if self._record is not None:
                self._record.status = status
                self._record.finished = time.time()
                if exc is not None and self._record.error is None:
                    self._record.error = f"{type(exc).__name__}: {exc}"
                self.run_dir.write_record(self._record)
            log.info("run_closed", run_id=self.run_id, status=status)
            self._stop_metrics_server()
            if self._finished is not None:
                self._finished.set()

    def _moved_to_sink_process(self, sinks: Sequence[Sink]) -> list[str]:
        """The sinks the sink process runs: only ``report_to`` sinks (a process rebuilds them
        by name), all of them, none, or those that prefer it (``sink_process``)."""
        assert self._record is not None
        by_name = {sink.sink_name: sink for sink in sinks}
        return [
            record.name
            for record in self._record.sinks
            if record.integration
            and (
                self.sink_process
                if self.sink_process is not None
                else by_name[record.name].prefers_sink_process
            )
        ]

    def _report_backlog(self, reports: Mapping[str, SinkReport]) -> None:
        """Say, once, which sinks still owe events and how to deliver them."""
        behind = {name: r.undelivered for name, r in reports.items() if r.undelivered}
        if behind:
            log.warning(
                "run_closed_with_undelivered_events",
                run_id=self.run_id,
                undelivered=behind,
                hint=f"trainbus sync {self.run_dir.path}",
            )

    async def _final_status(self, exc: BaseException | None) -> RecordStatus:
        reported: RecordStatus | None = None
        if self._status_watch is not None:
            # Closed with the bus: iterating only drains what it buffered, without waiting.
            async for event in self._status_watch:
                if isinstance(event, RunFinished) and reported in (None, "completed"):
                    reported = event.status  # a later evaluate() must not hide a "stopped"
            self._status_watch = None
        if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
            return "killed"
        if exc is not None:
            return "failed"
        if self._record is not None and self._record.status != "running":
            return self._record.status
        return reported or "completed"

    def _mark_error(self, exc: BaseException) -> None:
        """Record the work's own failure, even if the caller catches it inside ``async with``."""
        if self._record is not None:
            self._record.status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._record.error = f"{type(exc).__name__}: {exc}"

    # --- running work -------------------------------------------------------------------------

    async def run_in_thread(
        self, work: Callable[[Bus], T], *, on_cancel: Callable[[], None] | None = None
    ) -> T:
        """Run ``work(bus)`` in a worker thread while this loop keeps serving the bus and sinks.

        For work that is not a ``Trainer`` (whose ``train_async`` does the same through
        ``open_run``). A thread cannot be cancelled, so cancelling the caller calls ``on_cancel``
        (ask the work to stop) and then waits for the thread: the run never closes under a live
        training loop. The work's own failure marks the run failed, as in ``open_run``.
        """
        async with self.open_run(None) as bus:
            return await run_in_worker_thread(
                functools.partial(work, bus), on_cancel=on_cancel or _nothing
            )

    @asynccontextmanager
    async def open_run(self, trainer: Any) -> AsyncIterator[Bus]:
        """The trainer's launcher protocol: the bus of this run, for one trainer call.

        Inside ``async with`` (``orch.train``) it lends the open bus and the run stays open for
        the caller; otherwise it opens the run for the call and closes it after. ``trainer`` is
        not read again: the run was configured when this orchestrator was built.
        """
        if self._bus is not None:
            bus = self._bus
            try:
                yield bus
            except anyio.get_cancelled_exc_class():
                raise  # the caller was cancelled: the training stopped and said so itself
            except BaseException as exc:  # the training's own failure
                self._mark_error(exc)
                raise
            finally:
                # A second call on this open run (orch.train twice) continues it.
                bus.context = dataclasses.replace(bus.context, continued=True)
            return
        async with self:
            yield self.bus

    async def train(self, trainer: Any, **train_kwargs: Any) -> Any:
        """Run ``trainer.train_async(**train_kwargs)`` on this run's bus (a worker thread).

        Cancelling the caller sets ``trainer.control.should_training_stop``: the loop stops after
        the current step, as if a callback had asked, and the run closes normally.
        """
        return await trainer.train_async(**train_kwargs, launcher=self)

    def events(self, *types: type[EventBase], max_buffer: int = 1024) -> Subscription:
        """Watch the run live: events published from now on (of ``types``, or all), in order.

        Call it on the run's loop, inside ``async with``; iteration ends when the run closes. A
        watcher more than ``max_buffer`` events behind loses the oldest ones (the subscription's
        ``dropped`` counts them); what must see every event is a sink, or reads the journal.
        """
        return self.bus.stream(*types, max_buffer=max_buffer)

    # --- watching the run -----------------------------------------------------------------------

    def metrics_snapshot(self) -> BusMetrics | None:
        """The bus's own metrics now, every sink included (``trainbus.orchestrator._live``); the
        last run's final figures after it closed, ``None`` before it opened. Any thread."""
        bus = self._last_bus
        return None if bus is None else run_metrics(bus, self.run_dir, self._moved)

    def metrics(self, *, interval: float = 1.0) -> MetricsStream:
        """``async for snapshot in orch.metrics(interval=...)``: the run's metrics now, then every
        ``interval`` seconds, and a final snapshot once the run has closed; call inside
        ``async with``. Snapshots are taken as they are asked for, so nothing piles up."""
        interval = check_interval(interval)
        _ = self.bus  # a clear error outside ``async with``
        assert self._finished is not None  # set with the bus
        return MetricsStream(self.metrics_snapshot, self._finished, interval)

    @property
    def status(self) -> RecordStatus | None:
        """``"running"`` while the run is open, then how it ended; ``None`` before it opened."""
        return self._record.status if self._record is not None else None

    async def wait_finished(self) -> RecordStatus:
        """Wait until the run has closed (delivery done or the flush deadline passed) and return
        how it ended; call on the run's loop, inside ``async with`` or after it."""
        if self._finished is None:
            raise RuntimeError("Orchestrator.wait_finished() needs a run opened with 'async with'.")
        await self._finished.wait()
        assert self._record is not None
        return self._record.status

    @property
    def metrics_url(self) -> str | None:
        """Where the Prometheus endpoint serves while the run is open (``metrics_port``)."""
        return self._metrics_server.url if self._metrics_server is not None else None

    def _stop_metrics_server(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.stop()
