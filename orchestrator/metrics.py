"""The bus's own metrics through the libraries services already scrape: Prometheus, OpenTelemetry.

Both exporters read one thing, a *source*: a callable returning the latest ``BusMetrics``
(``Orchestrator.metrics_snapshot``, or ``Bus.metrics`` for a bare bus), or ``None`` while there is
no run to report. Nothing is sampled in the background: a scrape (Prometheus) or a collection
(OpenTelemetry's reader) takes one snapshot and reports it, so the figures are as fresh as the
scrape. Every metric is named once, in ``RUN_METRICS`` and ``SINK_METRICS``, and both exporters
export exactly those::

    from prometheus_client import CollectorRegistry
    registry.register(prometheus_collector(orch.metrics_snapshot))   # a service's own registry
    server = serve_prometheus(orch.metrics_snapshot, port=9464)        # or an endpoint of its own
    otel = register_otel(orch.metrics_snapshot)                        # the global MeterProvider

``Orchestrator(metrics_port=...)`` (or ``$TRAINBUS_METRICS_PORT``) starts the endpoint with the run
and stops it with the run. Every series carries ``run_id`` and ``rank``; per-sink series add
``sink``. Counters count for the life of one bus (see ``trainbus.bus._metrics``); the sinks of the
sink process are as fresh as its last report (``trainbus.orchestrator.sink_host.STATS_EVERY``).

``prometheus_client`` and ``opentelemetry-api`` are optional (``pip install
'trainbus[prometheus]'``, ``'trainbus[otel]'``) and imported only when an exporter is made.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._metrics import BusMetrics
from trainbus.bus._stats import SinkHealth, SinkMode, SinkStats

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from prometheus_client.registry import Collector

__all__ = [
    "Figure",
    "METRICS_ADDR_VARIABLE",
    "METRICS_PORT_VARIABLE",
    "MetricsServer",
    "MetricsSource",
    "OtelMetrics",
    "RUN_METRICS",
    "SINK_METRICS",
    "SINK_MODE",
    "SINK_STATE",
    "prometheus_collector",
    "register_otel",
    "serve_prometheus",
]

MetricsSource = Callable[[], BusMetrics | None]
"""Returns the latest snapshot, or ``None`` while there is nothing to report; any thread."""

METRICS_PORT_VARIABLE: Final = "TRAINBUS_METRICS_PORT"
"""An ``Orchestrator`` serves its Prometheus endpoint on this port when set (0: any free one)."""
METRICS_ADDR_VARIABLE: Final = "TRAINBUS_METRICS_ADDR"
"""The address it binds (default ``127.0.0.1``: reachable from this machine only)."""

SINK_STATE: Final = "trainbus_sink_state"
_STATE_HELP: Final = "The sink's health (1 for the current one)."
SINK_MODE: Final = "trainbus_sink_mode"
_MODE_HELP: Final = "Where the sink reads from (1 for the current one)."
_HEALTHS: Final[tuple[SinkHealth, ...]] = get_args(SinkHealth)
_MODES: Final[tuple[SinkMode, ...]] = get_args(SinkMode)
_RUN_LABELS: Final = ("run_id", "rank")
_SINK_LABELS: Final = ("run_id", "rank", "sink")


@dataclasses.dataclass(frozen=True)
class Figure:
    """One exported metric: its Prometheus name (counters without ``_total``, which the
    exposition adds), kind, OpenTelemetry unit, help text and how to read it from a snapshot."""

    name: str
    kind: Literal["counter", "gauge"]
    unit: str
    help: str
    read: Callable[[Any], float]


RUN_METRICS: Final = (
    Figure("trainbus_events_published", "counter", "{event}", "Events published on the bus.",
           lambda m: m.published),
    Figure("trainbus_events_journaled", "counter", "{event}", "Events appended to the journal.",
           lambda m: m.journaled),
    Figure("trainbus_outbox_depth_events", "gauge", "{event}",
           "Events published and not yet journaled.", lambda m: m.queued),
    Figure("trainbus_journal_bytes", "gauge", "By", "Size of the journal on disk.",
           lambda m: m.journal_bytes),
    Figure("trainbus_publish_pauses", "counter", "{pause}",
           "Publishes paused because the event loop was far behind.", lambda m: m.publish_pauses),
    Figure("trainbus_bus_running", "gauge", "1", "1 while the run's bus is open, else 0.",
           lambda m: 1.0 if m.running else 0.0),
)  # fmt: skip
"""Run-level metrics, read from ``BusMetrics``."""

SINK_METRICS: Final = (
    Figure("trainbus_sink_delivered", "counter", "{event}",
           "Events the sink's destination acknowledged.", lambda s: s.delivered),
    Figure("trainbus_sink_retries", "counter", "{retry}",
           "Sends retried after a retryable error.", lambda s: s.retried),
    Figure("trainbus_sink_permanent_errors", "counter", "{error}",
           "Sends the destination refused for good (before narrowing to the bad points).",
           lambda s: s.failed),
    Figure("trainbus_sink_crashes", "counter", "{crash}",
           "Unexpected exceptions raised by the sink.", lambda s: s.crashes),
    Figure("trainbus_sink_quarantined_points", "counter", "{point}",
           "Points never sent because the destination refuses them (over the run directory).",
           lambda s: s.quarantined),
    Figure("trainbus_sink_lag_events", "gauge", "{event}",
           "Events published and not yet acknowledged by the sink.", lambda s: s.lag_events),
    Figure("trainbus_sink_lag_seconds", "gauge", "s",
           "Age of the oldest event waiting for the sink.", lambda s: s.lag_seconds),
    Figure("trainbus_sink_queue_depth_events", "gauge", "{event}",
           "Events in the sink's memory queue or batch in flight.", lambda s: s.queued),
    Figure("trainbus_sink_acknowledged_seq", "gauge", "1",
           "The last journal seq the sink acknowledged.", lambda s: s.acknowledged_seq),
)  # fmt: skip
"""Per-sink metrics, read from each ``SinkStats``; the states are exported as ``SINK_STATE``
(health, as logged by ``sink_state_changed``) and ``SINK_MODE`` (live or catching up)."""


_STATE_SET: Final = Figure(SINK_STATE, "gauge", "1", _STATE_HELP, lambda s: 0.0)
_MODE_SET: Final = Figure(SINK_MODE, "gauge", "1", _MODE_HELP, lambda s: 0.0)
"""The state sets as OpenTelemetry sees them (``_one_of`` reads them, not ``read``)."""


def _run_labels(metrics: BusMetrics) -> tuple[str, str]:
    return (metrics.run_id, str(metrics.rank))


def _sink_labels(metrics: BusMetrics, sink: SinkStats) -> tuple[str, str, str]:
    return (metrics.run_id, str(metrics.rank), sink.name)


def _missing(extra: str, package: str) -> ImportError:
    return ImportError(f"{package} is not installed; pip install 'trainbus[{extra}]'")


# --- Prometheus ---------------------------------------------------------------------------------


def prometheus_collector(source: MetricsSource) -> Collector:
    """A ``prometheus_client`` collector of the bus's metrics, to register in any registry."""
    collector: Collector = _collector_class()(source)
    return collector


@functools.cache
def _collector_class() -> type[Any]:
    """Built on first use: ``prometheus_client`` is imported only when a collector is asked for."""
    try:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            Metric,
            StateSetMetricFamily,
        )
        from prometheus_client.registry import Collector
    except ImportError:
        raise _missing("prometheus", "prometheus_client") from None

    def family(figure: Figure, labels: tuple[str, ...]) -> Any:
        kind = CounterMetricFamily if figure.kind == "counter" else GaugeMetricFamily
        return kind(figure.name, figure.help, labels=labels)

    def states() -> tuple[StateSetMetricFamily, StateSetMetricFamily]:
        return (
            StateSetMetricFamily(SINK_STATE, _STATE_HELP, labels=_SINK_LABELS),
            StateSetMetricFamily(SINK_MODE, _MODE_HELP, labels=_SINK_LABELS),
        )

    class BusCollector(Collector):
        """Reads one snapshot per scrape."""

        def __init__(self, source: MetricsSource) -> None:
            self._source = source

        def describe(self) -> Iterable[Metric]:
            """The names, without taking a snapshot (what ``register`` checks)."""
            yield from (family(f, _RUN_LABELS) for f in RUN_METRICS)
            yield from (family(f, _SINK_LABELS) for f in SINK_METRICS)
            yield from states()

        def collect(self) -> Iterable[Metric]:
            metrics = self._source()
            if metrics is None:
                return
            run = _run_labels(metrics)
            for figure in RUN_METRICS:
                metric = family(figure, _RUN_LABELS)
                metric.add_metric(run, float(figure.read(metrics)))
                yield metric
            for figure in SINK_METRICS:
                metric = family(figure, _SINK_LABELS)
                for sink in metrics.sinks:
                    metric.add_metric(_sink_labels(metrics, sink), float(figure.read(sink)))
                yield metric
            state, mode = states()
            for sink in metrics.sinks:
                labels = _sink_labels(metrics, sink)
                state.add_metric(labels, {h: h == sink.health for h in _HEALTHS})
                mode.add_metric(labels, {m: m == sink.mode for m in _MODES})
            yield state
            yield mode

    return BusCollector


class MetricsServer:
    """A running Prometheus endpoint (``serve_prometheus``); ``stop()`` ends it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        """The bound address and port (the chosen one when port 0 was asked)."""

    @property
    def url(self) -> str:
        """Where to scrape it."""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def stop(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def serve_prometheus(source: MetricsSource, *, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the bus's metrics (only those) at ``http://addr:port/metrics`` from a daemon thread.

    Args:
        source: what to report (see ``MetricsSource``).
        port: the TCP port; 0 picks a free one (``MetricsServer.address`` says which).
        addr: the address to bind; the default keeps the endpoint on this machine.
    """
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"metrics port must be between 0 and 65535, got {port}.")
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise _missing("prometheus", "prometheus_client") from None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(prometheus_collector(source))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)


# --- OpenTelemetry ------------------------------------------------------------------------------


class OtelMetrics:
    """The observable instruments ``register_otel`` made; ``close()`` makes them report nothing.

    OpenTelemetry cannot remove an instrument from a meter, so a closed registration stays
    registered and silent.
    """

    def __init__(self, source: MetricsSource) -> None:
        self._source: MetricsSource | None = source
        self.instruments: list[Any] = []

    def close(self) -> None:
        """Report nothing from now on (a run that ended, a service shutting down)."""
        self._source = None

    def _snapshot(self) -> BusMetrics | None:
        source = self._source
        return source() if source is not None else None


def register_otel(
    source: MetricsSource, *, meter_provider: MeterProvider | None = None
) -> OtelMetrics:
    """Observable instruments for the bus's metrics on ``meter_provider`` (default: the global
    one), each reading a snapshot when the provider's readers collect."""
    try:
        from opentelemetry import metrics as otel
    except ImportError:
        raise _missing("otel", "opentelemetry-api") from None
    meter = (meter_provider or otel.get_meter_provider()).get_meter("trainbus")
    registration = OtelMetrics(source)

    def run_callback(figure: Figure) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            metrics = registration._snapshot()
            if metrics is not None:
                attributes = dict(zip(_RUN_LABELS, _run_labels(metrics), strict=True))
                yield otel.Observation(figure.read(metrics), attributes)

        return observe

    def sink_callback(read: _SinkValues) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            metrics = registration._snapshot()
            if metrics is None:
                return
            for sink in metrics.sinks:
                base = dict(zip(_SINK_LABELS, _sink_labels(metrics, sink), strict=True))
                for value, extra in read(sink):
                    yield otel.Observation(value, {**base, **extra})

        return observe

    def make(figure: Figure, callback: Callable[[CallbackOptions], Iterator[Observation]]) -> None:
        create = (
            meter.create_observable_counter
            if figure.kind == "counter"
            else meter.create_observable_gauge
        )
        registration.instruments.append(
            create(figure.name, [callback], unit=figure.unit, description=figure.help)
        )

    for figure in RUN_METRICS:
        make(figure, run_callback(figure))
    for figure in SINK_METRICS:
        make(figure, sink_callback(_one_value(figure.read)))
    for state_set, states, current in ((_STATE_SET, _HEALTHS, _health), (_MODE_SET, _MODES, _mode)):
        make(state_set, sink_callback(_one_of(states, current)))
    return registration


_SinkValues = Callable[[SinkStats], list[tuple[float, dict[str, str]]]]


def _one_value(read: Callable[[SinkStats], float]) -> _SinkValues:
    def values(sink: SinkStats) -> list[tuple[float, dict[str, str]]]:
        return [(float(read(sink)), {})]

    return values


def _one_of(states: tuple[str, ...], current: Callable[[SinkStats], str]) -> _SinkValues:
    """A state set as OpenTelemetry has none: one series per state, 1 for the current one."""

    def values(sink: SinkStats) -> list[tuple[float, dict[str, str]]]:
        now = current(sink)
        return [(1.0 if state == now else 0.0, {"state": state}) for state in states]

    return values


def _health(sink: SinkStats) -> str:
    return sink.health


def _mode(sink: SinkStats) -> str:
    return sink.mode
