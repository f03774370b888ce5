"""What publishing costs the training thread, how fast the bus drains, and what a dead sink costs.

Three questions, each measured with the bus's loop in a background thread (a blocking portal,
as ``trainer.train()`` runs it) and the journal on:

* **publish cost**: ``bus.emit(StepEnd, ...)`` timed call by call on the training thread, with
  0, 1 and 4 sinks attached (median and p99, nanoseconds; the timer's own cost is included and
  reported separately);
* **sustained throughput**: events per second from the first publish until the sink has
  acknowledged the last event (journal write, fan-out, batching and delivery included);
* **barriers**: ``bus.barrier`` with plain hooks (run inline) and with one ``async def`` hook (a
  round trip to the loop's thread and back);
* **host loop lag**: with the bus on the application's loop and training in a worker thread
  (``train_async``), how late a 1 ms timer on that loop fires while training publishes;
* **a dead sink**: one sink stuck while 1,000,000 events are published; the resident set size
  growth after everything was published and journaled, and its peak during the run (measured in
  a fresh interpreter). Then the sink is released: how long it takes to receive every event from
  the journal, and whether they all arrived in order.

Run: ``python -m benchmarks.bench_bus [--quick]``; writes ``benchmarks/results/bus.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import psutil  # type: ignore[import-untyped]  # no stubs in the environment
import structlog

from benchmarks._common import (
    BENCH_DIR,
    Headline,
    bench_parser,
    format_table,
    median,
    percentile,
    write_result,
)
from trainbus.bus import Bus, Event, JournalReader, JournalWriter, Sink, StepEnd

TARGET_PUBLISH_NS = 2000
TARGET_RSS_MIB = 32


class CountingSink(Sink):
    """Acknowledges batches at once and only counts them: the cost of the bus, not of a sink."""

    max_batch_latency = 0.05

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.last_seq = -1

    async def write(self, batch: Sequence[Event]) -> None:
        self.count += len(batch)
        self.last_seq = batch[-1].seq


class StuckSink(Sink):
    """Hangs in ``write`` until released (a tracker that is down), then checks order and counts."""

    name = "stuck"
    max_batch_size = 4096

    def __init__(self) -> None:
        self.released = False
        self.count = 0
        self.last_seq = -1
        self.in_order = True

    async def write(self, batch: Sequence[Event]) -> None:
        while not self.released:
            await anyio.sleep(0.01)
        self.in_order = self.in_order and batch[0].seq > self.last_seq
        self.count += len(batch)
        self.last_seq = batch[-1].seq


@contextmanager
def _running(bus: Bus) -> Iterator[Bus]:
    """The bus's loop in a background thread, as ``trainer.train()`` runs it in a plain script."""
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bus),
    ):
        yield bus


def _timer_overhead_ns(samples: int = 100_000) -> float:
    clock = time.perf_counter_ns
    deltas = []
    for _ in range(samples):
        start = clock()
        deltas.append(clock() - start)
    return median(deltas)


def _publish_cost(sinks: int, events: int, root: Path, *, burst: int = 0) -> dict[str, Any]:
    """Time every emit on this thread while the loop drains in the portal thread.

    ``burst=0`` publishes back to back (a flood); otherwise ``burst`` events are followed by a
    0.2 ms sleep standing in for a training step's compute (which releases the GIL, as torch does).
    """
    attached = [CountingSink(f"count-{i}") for i in range(sinks)]
    bus = Bus(run_id="bench", journal_path=root / f"cost-{sinks}.tbj", sinks=attached)
    clock = time.perf_counter_ns
    emit = bus.emit
    costs = [0] * events
    with _running(bus):
        for step in range(2000):  # warm-up: allocator, caches, the loop's first bursts
            emit(StepEnd, global_step=step, epoch=0.0)
        bus.fsync()
        gc.collect()
        gc.disable()
        try:
            for i in range(events):
                start = clock()
                emit(StepEnd, global_step=i, epoch=0.0)
                costs[i] = clock() - start
                if burst and i % burst == burst - 1:
                    time.sleep(0.0002)
        finally:
            gc.enable()
        bus.fsync()
    return {
        "pattern": f"bursts of {burst}" if burst else "flood",
        "sinks": sinks,
        "events": events,
        "median_ns": median(costs),
        "p99_ns": percentile(costs, 99),
        "max_ns": float(max(costs)),
        "flow_control_pauses": bus.flow_control_pauses,
    }


def _journal_costs(events: int, root: Path) -> dict[str, Any]:
    """The loop side's own work per event: framing and writing a burst, and reading it back.

    Appends go straight from the loop with one ``os.write`` per burst of up to 4,096 events; this
    shows what that costs the loop, the figure that decides whether a writer thread would pay.
    """
    batch = [StepEnd(run_id="bench", seq=i, time=time.time(), global_step=i) for i in range(events)]
    writer = JournalWriter.open(root / "journal-costs.tbj")
    bursts = [batch[i : i + 4096] for i in range(0, events, 4096)]
    write_ns = []
    for burst in bursts:
        start = time.perf_counter_ns()
        writer.append(burst)
        write_ns.append((time.perf_counter_ns() - start) / len(burst))
    writer.close()
    reader = JournalReader(root / "journal-costs.tbj")
    start = time.perf_counter_ns()
    scanned = sum(1 for _ in reader.records())
    scan_ns = (time.perf_counter_ns() - start) / scanned
    start = time.perf_counter_ns()
    decoded = sum(1 for _ in reader.read_from(0))
    decode_ns = (time.perf_counter_ns() - start) / decoded
    return {
        "events": events,
        "append_ns_per_event_median": median(write_ns),
        "append_ns_per_event_p99": percentile(write_ns, 99),
        "scan_ns_per_record": scan_ns,
        "read_and_decode_ns_per_event": decode_ns,
    }


def _sync_hook(args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
    return control


async def _async_hook(args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
    return control


def _barrier_costs(calls: int, root: Path) -> list[dict[str, Any]]:
    """One barrier per call from the training thread, the loop in its portal thread."""
    rows = []
    bus = Bus(run_id="bench", journal_path=root / "barrier.tbj")
    cases = {"3 plain hooks": [_sync_hook] * 3, "1 async hook": [_async_hook]}
    with _running(bus):
        for name, hooks in cases.items():
            costs = []
            for _ in range(calls):
                start = time.perf_counter_ns()
                bus.barrier(hooks, None, None, 0, model=None)
                costs.append(time.perf_counter_ns() - start)
            rows.append(
                {
                    "hooks": name,
                    "calls": calls,
                    "median_ns": median(costs),
                    "p99_ns": percentile(costs, 99),
                }
            )
    return rows


def _host_loop_lag(events: int, root: Path, *, burst: int) -> dict[str, Any]:
    """train_async: the bus on the host's loop, training in a worker thread; how late is a timer?

    A task on the host loop sleeps 1 ms at a time; its oversleep is the loop lag a web service
    embedding trainbus would see while training publishes (a flood, or bursts between steps).
    """
    sink = CountingSink("count")
    lags: list[float] = []

    async def main() -> None:
        done = False

        async def ticker() -> None:
            while not done:
                start = time.perf_counter()
                await anyio.sleep(0.001)
                lags.append(time.perf_counter() - start - 0.001)

        def train(bus: Bus) -> None:
            for i in range(events):
                bus.emit(StepEnd, global_step=i, epoch=0.0)
                if burst and i % burst == burst - 1:
                    time.sleep(0.0002)

        bus = Bus(run_id="bench", journal_path=root / f"lag-{burst}.tbj", sinks=[sink])
        async with bus, anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.to_thread.run_sync(train, bus)
            done = True

    anyio.run(main)
    return {
        "pattern": f"bursts of {burst}" if burst else "flood",
        "events": events,
        "lag_median_ms": median(lags) * 1e3,
        "lag_p99_ms": percentile(lags, 99) * 1e3,
        "lag_max_ms": max(lags) * 1e3,
    }


def _throughput(events: int, root: Path) -> dict[str, Any]:
    """Events per second, first publish to last acknowledgement by one sink."""
    sink = CountingSink("count")
    bus = Bus(run_id="bench", journal_path=root / "throughput.tbj", sinks=[sink])
    with _running(bus):
        start = time.perf_counter()
        for i in range(events):
            bus.emit(StepEnd, global_step=i, epoch=0.0)
        published = time.perf_counter()
        while sink.last_seq < events - 1:
            time.sleep(0.001)
        delivered = time.perf_counter()
    return {
        "events": events,
        "publish_events_per_s": events / (published - start),
        "delivered_events_per_s": events / (delivered - start),
        "journal_bytes_per_event": (root / "throughput.tbj").stat().st_size / events,
    }


def _dead_sink_rss(events: int, root: Path) -> dict[str, Any]:
    """RSS growth while a sink is stuck; then it is released and must catch up on everything."""
    process = psutil.Process()
    sink = StuckSink()
    bus = Bus(run_id="bench", journal_path=root / "dead.tbj", sinks=[sink])
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            stop.wait(0.005)

    with _running(bus):
        for step in range(2000):
            bus.emit(StepEnd, global_step=step, epoch=0.0)
        bus.fsync()
        gc.collect()
        before = process.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        for i in range(events):
            bus.emit(StepEnd, global_step=i, epoch=0.0)
        published = time.perf_counter() - start
        bus.fsync()
        gc.collect()
        after = process.memory_info().rss
        stop.set()
        sampler.join()
        stats = bus.stats()["stuck"]
        released = time.perf_counter()
        sink.released = True
        while sink.count < events + 2000:  # the warm-up's events too
            time.sleep(0.01)
        caught_up = time.perf_counter() - released
    report = bus.report["stuck"] if bus.report else None
    return {
        "events": events,
        "publish_s": published,
        "rss_growth_mib": (after - before) / 2**20,
        "rss_peak_growth_mib": (max(peak, after) - before) / 2**20,
        "flow_control_pauses": bus.flow_control_pauses,
        "mode_while_stuck": stats.mode,
        "lag_events_while_stuck": stats.lag_events,
        "catch_up_s": caught_up,
        "received_after_release": sink.count,
        "in_order": sink.in_order,
        "undelivered_at_close": report.undelivered if report else None,
        "journal_mib": (root / "dead.tbj").stat().st_size / 2**20,
    }


def _dead_sink_in_fresh_process(events: int) -> dict[str, Any]:
    """The dead-sink scenario in a new interpreter: earlier runs' heap would hide its growth."""
    command = [sys.executable, "-m", "benchmarks.bench_bus", "--dead-sink-only", str(events)]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=900, cwd=BENCH_DIR.parent
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, "fewer events (a smoke run)")
    parser.add_argument("--dead-sink-only", type=int, metavar="EVENTS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if args.dead_sink_only:
        with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
            print(json.dumps(_dead_sink_rss(args.dead_sink_only, Path(tmp))))
        return
    cost_events = 20_000 if args.quick else 300_000
    paced_events = 8_000 if args.quick else 64_000
    flow_events = 50_000 if args.quick else 1_000_000
    dead_events = 100_000 if args.quick else 1_000_000
    load_before = os.getloadavg()
    timer_ns = _timer_overhead_ns()
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        root = Path(tmp)
        costs = [_publish_cost(n, cost_events, root) for n in (0, 1, 4)]
        costs += [_publish_cost(n, paced_events, root, burst=16) for n in (0, 1, 4)]
        flow = _throughput(flow_events, root)
        journal = _journal_costs(flow_events, root)
        barriers = _barrier_costs(2_000 if args.quick else 20_000, root)
        lag = [_host_loop_lag(flow_events // 4, root, burst=0)]
        lag.append(_host_loop_lag(paced_events, root, burst=16))
    dead = _dead_sink_in_fresh_process(dead_events)
    worst_median = max(row["median_ns"] for row in costs)
    headline = [
        Headline(
            "publish cost, median (worst of 0/1/4 sinks)",
            worst_median,
            "ns",
            f"<= {TARGET_PUBLISH_NS} ns",
            worst_median <= TARGET_PUBLISH_NS,
            f"includes ~{timer_ns:.0f} ns of timer overhead",
        ),
        Headline(
            "publish cost, p99, flood (worst of 0/1/4 sinks)",
            max(row["p99_ns"] for row in costs if row["pattern"] == "flood"),
            "ns",
        ),
        Headline(
            "publish cost, p99, bursts of 16 between steps (worst of 0/1/4 sinks)",
            max(row["p99_ns"] for row in costs if row["pattern"] != "flood"),
            "ns",
            note="a burst's first publish wakes the loop, which then takes the GIL",
        ),
        Headline("sustained delivery, 1 sink", flow["delivered_events_per_s"], "events/s"),
        Headline(
            f"RSS growth, dead sink, {dead_events:,} events",
            dead["rss_growth_mib"],
            "MiB",
            f"<= {TARGET_RSS_MIB} MiB",
            dead["rss_growth_mib"] <= TARGET_RSS_MIB,
            f"peak during publishing: {dead['rss_peak_growth_mib']:.1f} MiB",
        ),
        Headline(
            "stuck sink, after release: events received from the journal",
            float(dead["received_after_release"]),
            "events",
            f"all {dead_events + 2000:,}, in order",
            dead["received_after_release"] == dead_events + 2000 and dead["in_order"],
            f"caught up in {dead['catch_up_s']:.1f} s",
        ),
    ]
    tables = {
        "publish cost": costs,
        "throughput": [flow],
        "journal (loop side)": [journal],
        "barrier": barriers,
        "host loop lag (train_async)": lag,
        "dead sink": [dead],
    }
    for name, rows in tables.items():
        print(f"\n{name}\n{format_table(rows)}")
    print(f"\nheadline\n{format_table([h.__dict__ for h in headline])}")
    path = write_result(
        "bus",
        quick=args.quick,
        headline=headline,
        tables=tables,
        extra={
            "timer_overhead_ns": timer_ns,
            "cpus_available": len(os.sched_getaffinity(0)),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
