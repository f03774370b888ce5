"""The bus's metrics exported from a live run: Prometheus over HTTP, OpenTelemetry, the async API.

The live checks pause the training thread in a callback until the test has read the figures,
so the run is open and still while they are compared; nothing here waits on a clock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trainbus.bus import BusMetrics, ConfigurationError, JournalReader, Log, StepEnd
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.metrics import (
    RUN_METRICS,
    SINK_METRICS,
    prometheus_collector,
    register_otel,
)
from trainbus.orchestrator.run import Orchestrator
from trainbus.orchestrator.sink_host import read_reports
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

STEPS = 20
PAUSE_AT = 10
HANG_GUARD_S = 120.0
"""Bounds a wait that should take milliseconds; never reached unless something hangs."""


class PauseAt(TrainerCallback):
    """Holds the training thread at one step until the test has looked at the run."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.paused = threading.Event()
        self.resume = threading.Event()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.paused.set()
            self.resume.wait(HANG_GUARD_S)


def make_trainer(output_dir: Path, *callbacks: TrainerCallback) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=RegressionDataset(64),
        callbacks=list(callbacks),
    )


def _prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _otel(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    """Every data point the reader collected: (name, sorted attributes) -> value."""
    data = reader.get_metrics_data()
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted(dict(point.attributes or {}).items())))
                    points[key] = float(point.value)  # type: ignore[union-attr]
    return points


def _journal_bytes(path: Path) -> int:
    return sum(os.path.getsize(path / name) for name in os.listdir(path))


async def test_prometheus_and_otel_report_a_live_run_as_the_bus_sees_it(tmp_path: Path) -> None:
    """Scraped over HTTP while training is paused mid-run, the endpoint's figures equal the bus's
    and the journal's; OpenTelemetry's in-memory reader reads the same; after the run every
    counter equals what was delivered and the endpoint is gone."""
    pause = PauseAt(PAUSE_AT)
    trainer = make_trainer(tmp_path, pause)
    sink = RecordingSink("rec")
    reader = InMemoryMetricReader()
    orch = Orchestrator(output_dir=tmp_path, report_to="none", sinks=[sink], metrics_port=0)
    register_otel(orch.metrics_snapshot, meter_provider=MeterProvider(metric_readers=[reader]))
    with anyio.fail_after(HANG_GUARD_S):
        async with orch, anyio.create_task_group() as tg:
            tg.start_soon(orch.train, trainer)
            assert await anyio.to_thread.run_sync(pause.paused.wait, HANG_GUARD_S)
            try:
                bus = orch.bus
                await bus.drain()
                await sink.wait_for(bus.metrics().journaled)
                url = orch.metrics_url
                assert url is not None and url.startswith("http://127.0.0.1:")
                async with httpx.AsyncClient() as client:
                    response = await client.get(url)
                scraped = _prometheus(response.text)
                collected = _otel(reader)
                stats = bus.stats()["rec"]
                received = len(sink.received)
                metrics = bus.metrics()
                journal = orch.run_dir.journal_path
                on_disk = sum(1 for _ in JournalReader(journal).records())
                size = _journal_bytes(journal)
                status = orch.status
            finally:
                pause.resume.set()
    run = (("rank", "0"), ("run_id", orch.run_id))
    rec = (*run, ("sink", "rec"))
    assert status == "running"
    assert response.status_code == 200
    assert metrics.published == metrics.journaled == on_disk == stats.delivered > 0
    assert scraped[("trainbus_events_published_total", run)] == metrics.published
    assert scraped[("trainbus_events_journaled_total", run)] == on_disk
    assert scraped[("trainbus_journal_bytes", run)] == size
    assert scraped[("trainbus_bus_running", run)] == 1
    assert scraped[("trainbus_sink_delivered_total", rec)] == stats.delivered == received
    assert scraped[("trainbus_sink_lag_events", rec)] == 0
    assert scraped[("trainbus_sink_acknowledged_seq", rec)] == metrics.last_seq
    assert scraped[("trainbus_sink_state", (*rec, ("trainbus_sink_state", "healthy")))] == 1
    assert scraped[("trainbus_sink_state", (*rec, ("trainbus_sink_state", "retrying")))] == 0
    assert collected[("trainbus_events_published", run)] == metrics.published
    assert collected[("trainbus_journal_bytes", run)] == size
    assert collected[("trainbus_sink_delivered", rec)] == stats.delivered
    assert collected[("trainbus_sink_state", (*rec, ("state", "healthy")))] == 1
    assert {name for name, _ in collected} == {f.name for f in (*RUN_METRICS, *SINK_METRICS)} | {
        "trainbus_sink_state",
        "trainbus_sink_mode",
    }

    # After the run: the endpoint is stopped, the final figures stay readable.
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    registry = CollectorRegistry()
    registry.register(prometheus_collector(orch.metrics_snapshot))
    labels = {"run_id": orch.run_id, "rank": "0"}
    published = registry.get_sample_value("trainbus_events_published_total", labels)
    sink_labels = {**labels, "sink": "rec"}
    delivered = registry.get_sample_value("trainbus_sink_delivered_total", sink_labels)
    assert published == delivered == len(sink.received) > on_disk
    assert registry.get_sample_value("trainbus_bus_running", labels) == 0
    final = _otel(reader)
    assert final[("trainbus_sink_delivered", rec)] == len(sink.received)


async def test_status_and_a_live_stream_of_metrics_end_with_the_run(tmp_path: Path) -> None:
    """``wait_finished`` returns how the run ended; ``metrics()`` yields snapshots while it runs
    and a final one, whose counters equal what the sink received, then ends."""
    sink = RecordingSink("rec")
    snapshots: list[BusMetrics] = []
    finished: list[str] = []
    orch = Orchestrator(output_dir=tmp_path, report_to="none", sinks=[sink])
    assert orch.status is None and orch.metrics_snapshot() is None

    async def watch() -> None:
        async for snapshot in orch.metrics(interval=0.01):
            snapshots.append(snapshot)

    async def wait() -> None:
        finished.append(await orch.wait_finished())

    with anyio.fail_after(HANG_GUARD_S):
        async with anyio.create_task_group() as tg, orch:
            tg.start_soon(watch)
            tg.start_soon(wait)
            await orch.train(make_trainer(tmp_path))
            assert orch.status == "running" and not finished
    assert finished == ["completed"] and orch.status == "completed"
    assert snapshots[0].running and not snapshots[-1].running
    assert sum(not s.running for s in snapshots) == 1  # the stream ends after the final one
    [final] = snapshots[-1].sinks
    assert final.delivered == snapshots[-1].published == len(sink.received)
    assert final.health == "closed"
    assert orch.metrics_url is None


async def test_sinks_in_the_sink_process_are_reported_from_its_figures(tmp_path: Path) -> None:
    """A ``report_to`` sink moved to the sink process shows up in the metrics, and its final
    figures are the ones the child reported."""
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb")}

    def work(bus: Any) -> None:
        for step in range(1, 21):
            bus.emit(StepEnd, global_step=step)
            bus.emit(Log, global_step=step, logs={"loss": 1.0 / step})

    with anyio.fail_after(HANG_GUARD_S):
        async with Orchestrator(
            output_dir=tmp_path, report_to=["tensorboard"], env=env, sink_process=True
        ) as orch:
            during = orch.metrics_snapshot()
            await orch.run_in_thread(work)
    assert during is not None and [s.name for s in during.sinks] == ["tensorboard"]
    final = orch.metrics_snapshot()
    assert final is not None
    [child] = final.sinks
    report = read_reports(orch.run_dir)["tensorboard"]
    assert child.delivered == report.delivered > 0
    assert child.acknowledged_seq == report.acknowledged_seq == final.last_seq
    assert child.health == "closed" and child.lag_events == 0


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_bad_metrics_port_is_refused_before_the_run(tmp_path: Path, port: int) -> None:
    """``metrics_port`` outside 0..65535 is a configuration error naming the field."""
    with pytest.raises(ConfigurationError, match="metrics_port"):
        Orchestrator(output_dir=tmp_path, report_to="none", metrics_port=port)


def test_the_port_comes_from_the_environment(tmp_path: Path) -> None:
    """``TRAINBUS_METRICS_PORT`` sets the port; a non-number names the variable."""
    env = {"TRAINBUS_METRICS_PORT": "0"}
    assert Orchestrator(output_dir=tmp_path, report_to="none", env=env).metrics_port == 0
    with pytest.raises(ConfigurationError, match="TRAINBUS_METRICS_PORT"):
        Orchestrator(output_dir=tmp_path, report_to="none", env={"TRAINBUS_METRICS_PORT": "x"})


def test_a_collector_reports_nothing_before_a_run_and_a_closed_otel_nothing_after() -> None:
    """No snapshot, no samples; a closed OpenTelemetry registration stops reporting."""
    registry = CollectorRegistry()
    registry.register(prometheus_collector(lambda: None))
    assert registry.get_sample_value("trainbus_events_published_total", {}) is None
    reader = InMemoryMetricReader()
    snapshot = BusMetrics(
        run_id="r",
        rank=0,
        time=0.0,
        running=True,
        published=3,
        journaled=3,
        last_seq=2,
        queued=0,
        journal_bytes=10,
        publish_pauses=0,
    )
    otel = register_otel(lambda: snapshot, meter_provider=MeterProvider(metric_readers=[reader]))
    assert _otel(reader)[("trainbus_events_published", (("rank", "0"), ("run_id", "r")))] == 3
    otel.close()
    assert ("trainbus_events_published", (("rank", "0"), ("run_id", "r"))) not in _otel(reader)


def test_the_service_metrics_example_trains_and_watches(tmp_path: Path) -> None:
    """``examples/service_metrics.py`` on trio: the stream ends with the run, the awaited status is
    ``completed``, and the sink's delivered count is the number of lines it wrote."""
    from examples.service_metrics import train_and_watch

    async def main() -> dict[str, Any]:
        with anyio.fail_after(HANG_GUARD_S):
            return await train_and_watch(tmp_path, max_steps=20, interval=0.05)

    result = anyio.run(main, backend="trio")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert result["status"] == "completed"
    assert result["snapshots"] >= 2  # at least the first and the final one
    assert result["health"] == {"jsonlines": "closed"}
    assert result["delivered"] == {"jsonlines": len(lines)} and lines
