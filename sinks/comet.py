"""Comet over its REST API v2, online or offline, following HF's ``CometCallback``.

Metrics get HF's ``train/``/``eval/``/``test/`` prefixes with ``step`` = ``global_step`` and the
event's epoch and wall time; ``Predict`` metrics are logged too. Parameters are the arguments and
the model config, flattened (``args.learning_rate``, ``config.hidden_size``), secrets masked.

Environment: ``COMET_API_KEY``; ``COMET_URL_OVERRIDE`` (server root, default
``https://www.comet.com/``); ``COMET_WORKSPACE`` and ``COMET_PROJECT_NAME`` (default
``general``); ``COMET_MODE`` = ``get`` (resume ``COMET_EXPERIMENT_KEY``), ``create`` (always a
new experiment) or ``get_or_create`` (the default); ``COMET_LOG_ASSETS`` (upload files from
``Artifact`` events); ``COMET_START_ONLINE=0`` for offline mode.

Offline mode sends nothing: every request is appended to ``<run_dir>/comet-offline.jsonl``, one
JSON object per line, each batch in one write. Upload it later, from any machine that can reach
the server, with::

    COMET_API_KEY=... COMET_WORKSPACE=... trainbus comet-upload RUN_DIR/comet-offline.jsonl

which creates the experiment and replays each request in order (see ``upload_offline``).

Comet's REST API takes one point per request, so this sink keeps at most ``IN_FLIGHT`` (8)
requests open: enough for ordinary logging rates, and a bound on the CPU (and GIL time) it
takes from training. The requests go out from ``IN_FLIGHT`` workers (not a task per point) on
kept-alive connections through a lean HTTP/1.1 client (``trainbus.sinks._http1``; httpx when the
environment names a proxy), which costs a fraction of httpx's CPU per point. At
``logging_steps=1`` on a fast loop the sink falls behind rather than slow training down; the bus
keeps the backlog in the journal, the sink catches up, and whatever is left at the end stays
there for ``trainbus sync`` (offline mode has no such limit).

The experiment key is saved in ``<run_dir>/comet.json`` so a replay continues the same
experiment. Within a process, a retried batch skips the points already acknowledged; Comet has
no idempotent metric write, so a replay after a crash may repeat the last unacknowledged batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import msgspec
import structlog

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, SinkError
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished, RunStarted
from trainbus.bus._paths import confine, confined_files, output_root
from trainbus.bus._secrets import redact, redact_url
from trainbus.bus._sink import Sink
from trainbus.sinks._comet_api import (
    CometApi,
    Request,
    metric_body,
    other_body,
    parameter_body,
    rest_base,
    tags_body,
    times_body,
)
from trainbus.sinks._http1 import Http1Client, env_proxy_for
from trainbus.sinks._rewrite import flatten, numeric_items, param_text, rewrite_logs
from trainbus.sinks._state import load_state, save_state

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["CometSink", "upload_offline"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "comet.json"
OFFLINE_FILE: Final = "comet-offline.jsonl"
OFFLINE_KEY: Final = "OFFLINE"
MODES: Final = ("get", "create", "get_or_create")
IN_FLIGHT: Final = 8
_encoder: Final = msgspec.json.Encoder()
_METRIC_ENDPOINT: Final = "write/experiment/metric"


class _MetricBody(msgspec.Struct, gc=False):
    """``metric_body``'s JSON, same fields in the same order, without a dict per point.

    Offline mode writes one of these per logged number, tens of thousands a second at 200
    scalars a step; with a struct per point and no per-request bookkeeping (the acknowledgement
    keys online mode needs), a point costs about a fifth of what it did through the online path.
    """

    experimentKey: str  # Comet's field names, spelt as its API spells them
    metricName: str
    metricValue: float
    step: int
    epoch: float
    timestamp: int


class _OfflineMetric(msgspec.Struct, gc=False):
    """One line of the offline file for a metric point (``_write_offline`` writes the rest)."""

    seq: int
    endpoint: str
    body: _MetricBody


class CometSink(Sink):
    """Deliver a run to Comet (or to an offline file); see the module docstring."""

    name = "comet_ml"
    events = (RunStarted, Log, Predict, Artifact, RunFinished)
    max_batch_size = 64  # one request per point: small batches keep acknowledgements flowing
    max_batch_latency = 1.0

    def __init__(
        self,
        *,
        run_dir: Path,
        run_name: str = "",
        api_key: str | None = None,
        url_override: str | None = None,
        workspace: str | None = None,
        project: str = "general",
        mode: str = "get_or_create",
        experiment_key: str | None = None,
        log_assets: bool = False,
        online: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"COMET_MODE must be one of {', '.join(MODES)}; got {mode!r}.")
        if online and not api_key:
            raise ConfigurationError(
                "COMET_API_KEY must be set for online Comet logging (or set COMET_START_ONLINE=0 "
                "to log offline)."
            )
        if mode == "get" and not experiment_key:
            raise ConfigurationError("COMET_MODE=get needs COMET_EXPERIMENT_KEY to be set.")
        if online and mode != "get" and not workspace and not experiment_key:
            raise ConfigurationError(
                "COMET_WORKSPACE must name the workspace new Comet experiments are created in."
            )
        self.run_dir = run_dir
        self.run_name = run_name
        self.base_url = rest_base(url_override)
        self.workspace = workspace or ""
        self.project = project
        self.mode = mode
        self.requested_key = experiment_key
        self.log_assets = log_assets
        self.online = online
        self._api_key = api_key or ""
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._lean: Http1Client | None = None
        self._api: CometApi | None = None
        self._key: str | None = None
        self._state: dict[str, Any] = {}
        self._acked: set[tuple[int, str]] = set()
        self._acked_seq = -1

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Chosen by ``report_to="all"`` when an API key, offline mode or a mode is configured."""
        offline = env_str(env, "COMET_START_ONLINE") is not None and not env_flag(
            env, "COMET_START_ONLINE", default=True, lenient=True
        )
        return bool(env_str(env, "COMET_API_KEY") or offline or env_str(env, "COMET_MODE"))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from Comet's and HF's environment variables."""
        mode = (env_str(env, "COMET_MODE") or "get_or_create").lower()
        return cls(
            run_dir=run_dir,
            run_name=run_name,
            api_key=env_str(env, "COMET_API_KEY"),
            url_override=env_str(env, "COMET_URL_OVERRIDE"),
            workspace=env_str(env, "COMET_WORKSPACE"),
            project=env_str(env, "COMET_PROJECT_NAME") or "general",
            mode=mode,
            experiment_key=env_str(env, "COMET_EXPERIMENT_KEY"),
            log_assets=env_flag(env, "COMET_LOG_ASSETS"),
            online=env_flag(env, "COMET_START_ONLINE", default=True),
        )

    @property
    def experiment_key(self) -> str | None:
        return self._key

    @property
    def offline_path(self) -> Path:
        return self.run_dir / OFFLINE_FILE

    async def open(self) -> None:
        self._state = load_state(self.run_dir / STATE_FILE)
        if self.online:
            headers = {"Authorization": self._api_key, "User-Agent": "trainbus"}
            connect_timeout = min(10.0, self._timeout)
            self._client = httpx.AsyncClient(
                base_url=self.base_url + "/",
                headers=headers,
                timeout=httpx.Timeout(self._timeout, connect=connect_timeout),
            )
            if not env_proxy_for(self._client.base_url):
                https = self._client.base_url.scheme == "https"
                self._lean = Http1Client(
                    self.base_url + "/",
                    headers,
                    service="Comet",
                    timeout=self._timeout,
                    connect_timeout=connect_timeout,
                    max_idle=IN_FLIGHT,
                    ssl_context=httpx.create_ssl_context() if https else None,
                )
            self._api = CometApi(self._client, self._lean)
        log.info("comet sink opened", online=self.online, server=redact_url(self.base_url))

    async def write(self, batch: Sequence[Event]) -> None:
        """Send the batch: experiment first, then params, metrics, assets and the end time."""
        started = next((e for e in batch if isinstance(e, RunStarted)), None)
        key = await self._ensure_experiment(started)
        if self.online:
            requests: list[tuple[tuple[int, str], Request]] = []
            for event in batch:
                if event.seq > self._acked_seq:
                    requests.extend(self._requests(key, event))
            await self._send_all(requests)
        else:
            self._write_offline(key, [e for e in batch if e.seq > self._acked_seq])
        for event in batch:
            if isinstance(event, Artifact) and self.log_assets and event.seq > self._acked_seq:
                await self._upload(key, event)
        if batch:
            self._acked_seq = max(self._acked_seq, batch[-1].seq)
            self._acked.clear()
            if not self.online:
                self._state["offline_seq"] = self._acked_seq
                save_state(self.run_dir / STATE_FILE, self._state)

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
            self._lean = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- internals ----------------------------------------------------------------------------

    async def _ensure_experiment(self, started: RunStarted | None) -> str:
        if self._key is not None:
            return self._key
        if not self.online:
            self._key = OFFLINE_KEY
            self._acked_seq = int(self._state.get("offline_seq", -1))
            return self._key
        api = self._require_api()
        key: str | None = self._state.get("experiment_key")
        if key is None and self.requested_key and self.mode != "create":
            if await api.exists(self.requested_key):
                key = self.requested_key
            elif self.mode == "get":
                raise PermanentSinkError(
                    f"COMET_EXPERIMENT_KEY {self.requested_key!r} is unknown to the server"
                )
        if key is None:
            name = (started.run_name if started else "") or self.run_name
            key = await api.create(self.workspace, self.project, name)
            await api.post(*tags_body(key, ["trainbus"]))
            log.info("comet experiment created", experiment_key=key)
        self._key = key
        self._state["experiment_key"] = key
        save_state(self.run_dir / STATE_FILE, self._state)
        return key

    def _require_api(self) -> CometApi:
        if self._api is None:
            raise RuntimeError("CometSink.write() called before open()")
        return self._api

    def _requests(self, key: str, event: Event) -> list[tuple[tuple[int, str], Request]]:
        out: list[tuple[tuple[int, str], Request]] = []
        stamp = round(event.time * 1000)
        if isinstance(event, RunStarted):
            params = flatten({"args": redact(event.config), "config": redact(event.hparams)})
            for name, value in params.items():
                out.append(((event.seq, "p:" + name), parameter_body(key, name, param_text(value))))
            out.append(((event.seq, "t:start"), times_body(key, start_ms=stamp)))
        elif isinstance(event, (Log, Predict)):
            for name, number in _metric_points(event):
                body = metric_body(
                    key, name, number, step=event.global_step, epoch=event.epoch, timestamp_ms=stamp
                )
                out.append(((event.seq, "m:" + name), body))
        elif isinstance(event, RunFinished):
            out.append(((event.seq, "o:status"), other_body(key, "trainbus_status", event.status)))
            if event.error:
                error = str(redact(event.error))[:1000]
                out.append(((event.seq, "o:error"), other_body(key, "trainbus_error", error)))
            out.append(((event.seq, "t:end"), times_body(key, end_ms=stamp)))
        return out

    def _write_offline(self, key: str, events: Sequence[Event]) -> None:
        """Append every request of ``events`` to the offline file, in one encode and one write."""
        lines: list[Any] = []
        for event in events:
            if isinstance(event, (Log, Predict)):
                stamp, seq, step, epoch = (
                    round(event.time * 1000),
                    event.seq,
                    event.global_step,
                    event.epoch,
                )
                lines.extend(
                    _OfflineMetric(
                        seq, _METRIC_ENDPOINT, _MetricBody(key, name, number, step, epoch, stamp)
                    )
                    for name, number in _metric_points(event)
                )
            else:
                lines.extend(
                    {"seq": seq, "endpoint": endpoint, "body": body}
                    for (seq, _), (endpoint, body) in self._requests(key, event)
                )
        if lines:
            with self.offline_path.open("ab") as handle:
                handle.write(_encoder.encode_lines(lines))

    async def _send_all(self, requests: list[tuple[tuple[int, str], Request]]) -> None:
        pending = [(ident, req) for ident, req in requests if ident not in self._acked]
        if not pending:
            return
        api = self._require_api()
        acked = self._acked
        errors: list[SinkError] = []
        queue = iter(pending)

        async def worker() -> None:
            # Workers share one iterator: each takes the next request when its last one is done.
            for ident, (endpoint, body) in queue:
                try:
                    await api.post(endpoint, body)
                except SinkError as exc:
                    errors.append(exc)
                    return
                acked.add(ident)
                if errors:
                    return  # the batch is failing anyway; leave the rest for the retry

        async with anyio.create_task_group() as tg:
            for _ in range(min(IN_FLIGHT, len(pending))):
                tg.start_soon(worker)
        if errors:
            # One error for the runtime: a permanent one wins, else the longest Retry-After.
            permanent = [e for e in errors if isinstance(e, PermanentSinkError)]
            if permanent:
                raise permanent[0]
            raise max(errors, key=lambda e: getattr(e, "retry_after", None) or 0.0)

    async def _upload(self, key: str, event: Artifact) -> None:
        source = Path(event.path)
        if not source.exists():
            log.warning("comet asset missing, skipped", path=str(source))
            return
        base = event.name or source.name
        try:
            files = confined_files(source, output_root(self.run_dir), what="artifact path")
        except ConfigurationError as exc:
            log.warning("comet asset refused, skipped", reason=str(exc))
            return
        source = source.resolve()
        for file in files:
            name = base if file == source else f"{base}/{file.relative_to(source).as_posix()}"
            if not self.online:
                line = {"seq": event.seq, "asset": str(file), "fileName": name}
                with self.offline_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
                continue
            await self._require_api().upload_asset(key, file, name)


def _metric_points(event: Log | Predict) -> Iterator[tuple[str, float]]:
    """The event's numbers under their dashboard names; non-finite ones left out (JSON has no
    spelling for them and Comet's API takes numbers only)."""
    values = event.logs if isinstance(event, Log) else event.metrics
    return (
        (name, number)
        for name, number in numeric_items(rewrite_logs(values))
        if math.isfinite(number)
    )


async def upload_offline(path: Path, env: Mapping[str, str]) -> str:
    """Replay an offline file against the server named by ``env``; returns the experiment key.

    A new experiment is created (named after the run directory) unless ``COMET_EXPERIMENT_KEY``
    names one; requests are sent in their original order. ``trainbus comet-upload`` calls this.
    """
    if not path.is_file():
        raise ConfigurationError(
            f"offline file {str(path)!r} does not exist; expected the {OFFLINE_FILE} "
            "that a run with COMET_START_ONLINE=0 wrote into its run directory"
        )
    sink = CometSink.from_env(
        {**env, "COMET_START_ONLINE": "1"}, run_dir=path.parent, run_name=path.parent.name
    )
    root = output_root(path.parent)  # the offline file is data: its assets stay in the run
    await sink.open()
    sink._state = {}  # never reuse a key saved by an earlier upload: each upload is one experiment
    try:
        key = await sink._ensure_experiment(None)
        api = sink._require_api()
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                if "asset" in record:
                    asset = confine(record["asset"], root, what=f"{OFFLINE_FILE} asset")
                    await api.upload_asset(key, asset, record["fileName"])
                    continue
                body = dict(record["body"])
                body["experimentKey"] = key
                await api.post(record["endpoint"], body)
    finally:
        await sink.close()
    return key
