"""MLflow: experiment, run, params, tags, metrics, status and checkpoints, on any tracking URI.

An http(s) tracking server is spoken to over its REST API with httpx (no mlflow package needed);
every other URI (``file:``, ``sqlite:``, ``databricks``, ``databricks://<profile>``, and no URI at
all: MLflow's own default store in the working directory, as Hugging Face's callback uses) goes
through ``mlflow.tracking.MlflowClient`` in a worker thread (``_mlflow_client``). Both paths make
the same calls with the same rules (``_mlflow_api.MlflowBackend``).

Behaviour follows Hugging Face's ``MLflowCallback`` (same environment variables, raw metric keys
sanitised the same way, params from the model config overlaid by the arguments and written as
``str()`` writes them, the ``mlflow.*`` tags ``mlflow.start_run`` adds, checkpoints as artifacts
with ``HF_MLFLOW_LOG_ARTIFACTS``), with what the callback could not do:

* Nothing runs on the training thread. Metrics go out through ``runs/log-batch`` in requests
  filled to the server's limits, so a slow server costs one round trip per 1000 points.
* Replays never duplicate points. Each point's timestamp is its event's wall time, so a re-sent
  batch carries byte-identical points, which MLflow's SQL store ignores; the sink also remembers
  the highest event it saw acknowledged and skips it on retry.
* One bad point never costs the others. Metric and param names are checked against the server's
  rules before sending (``_mlflow_api.name_problem``); points that break them are quarantined,
  never sent. Should the server still refuse a batch with a 400, the runtime splits it
  (``split`` goes down to one request per metric of a single event) until only the refused
  points are left.
* One MLflow run per training run: its id is saved in ``<run_dir>/mlflow.json`` and tagged on
  the run (``trainbus.run_id``), so ``evaluate()``/``predict()`` after ``train()`` and
  ``trainbus sync`` log into the same MLflow run, and params are sent once. ``predict()``'s
  ``test_*`` metrics are logged too (the callback has no ``on_predict``).
* A hyper-parameter search's trials (``RunStarted.trial``) are nested runs: one parent run per
  search (found again by its ``trainbus.search_id`` tag, so each trial's sink finds the one the
  first trial created), each trial a child with ``mlflow.parentRunId``, named after the trial.
  The parent is running while a trial runs and ends as the last trial ended. With
  ``MLFLOW_NESTED_RUN`` and ``MLFLOW_RUN_ID`` the search's parent nests under that run.
* Pushes to the model registry (``hub_model_id="models:/<name>"``, see ``docs/push.md``): an
  ``Artifact`` with ``register_as`` is uploaded to the run's artifacts under its ``name`` and
  registered as a new version of that model, its source those artifacts. The version is tagged
  with the push (``trainbus.push``) and looked up before it is created, so a replay never
  registers one push twice; a version still ``PENDING_REGISTRATION`` is waited for as a retry.
* Checkpoint files land where the run's artifact URI says: through the server when it proxies
  artifacts, else straight to the store (a path, ``s3://`` ...) with the mlflow client's artifact
  repository, as the client itself does.

Environment: ``MLFLOW_TRACKING_URI`` (any MLflow tracking URI; unset: MLflow's default store),
``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_RUN_ID``
(resume that run; with ``MLFLOW_NESTED_RUN`` it is the parent of a new child run),
``MLFLOW_TAGS`` (JSON object), ``MLFLOW_FLATTEN_PARAMS``, ``MLFLOW_MAX_LOG_PARAMS``,
``HF_MLFLOW_LOG_ARTIFACTS`` (upload checkpoints from ``Artifact`` events),
``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (seconds) and ``DISABLE_MLFLOW_INTEGRATION``.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import httpx
import msgspec
import structlog

from trainbus.bus._env import env_flag, env_int, env_str
from trainbus.bus._errors import (
    ConfigurationError,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
)
from trainbus.bus._events import Artifact, Event, Log, Predict, RunFinished, RunStarted, TrialInfo
from trainbus.bus._paths import confined_files, output_root, safe_relative_name
from trainbus.bus._secrets import redact, redact_url
from trainbus.bus._sink import Sink
from trainbus.sinks._mlflow_api import (
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MlflowApi,
    MlflowBackend,
    RunInfo,
    chunk_batches,
    metric_entry,
    name_problem,
    refusal_is_about_points,
)
from trainbus.sinks._mlflow_client import ClientApi, ensure_mlflow_installed
from trainbus.sinks._mlflow_context import context_tags
from trainbus.sinks._rewrite import flatten, numeric_items, sanitize_key
from trainbus.sinks._state import load_state, save_state

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["MLflowSink"]

log = structlog.get_logger(__name__)

STATE_FILE: Final = "mlflow.json"
RUN_TAG: Final = "trainbus.run_id"
SEARCH_TAG: Final = "trainbus.search_id"
"""Tags the parent run of a hyper-parameter search (its ``TrialInfo.search_id``)."""
TRIAL_TAG: Final = "trainbus.trial"
"""Tags a trial's run with its number in the search."""
PARENT_TAG: Final = "mlflow.parentRunId"
SEARCH_RUN_KEY: Final = "search_run_id"
PUSH_TAG: Final = "trainbus.push"
"""Tag of a registered model version: the push it came from (``<bus run id>:<event seq>``)."""
REGISTERED_KEY: Final = "registered"
ACKED_KEY: Final = "acked"
DEFAULT_URI_KEY: Final = "default_tracking_uri"
PIPELINE: Final = 2
_sanitize: Final = functools.lru_cache(maxsize=4096)(sanitize_key)
_name_problem: Final = functools.lru_cache(maxsize=4096)(name_problem)
_STATUS: Final = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}


class MLflowSink(Sink):
    """Deliver a run to an MLflow tracking server; see the module docstring."""

    name = "mlflow"
    events = (RunStarted, Log, Predict, Artifact, RunFinished)
    max_batch_size = 1000
    max_batch_latency = 1.0

    artifact_kinds: tuple[str, ...] = ("checkpoint",)
    """``Artifact`` kinds uploaded with ``log_artifacts``: checkpoints, as Hugging Face's callback
    logs each saved checkpoint and never the final model."""

    def __init__(
        self,
        tracking_uri: str | None,
        *,
        run_dir: Path,
        run_name: str = "",
        experiment_name: str | None = None,
        run_id: str | None = None,
        nested: bool = False,
        tags: Mapping[str, str] | None = None,
        flatten_params: bool = False,
        max_log_params: int | None = None,
        log_artifacts: bool = False,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if nested and not run_id:
            raise ConfigurationError(
                "MLFLOW_NESTED_RUN needs MLFLOW_RUN_ID to name the parent run."
            )
        for key in tags or {}:
            if (problem := name_problem(key)) is not None:
                raise ConfigurationError(
                    f"MLFLOW_TAGS holds the tag name {key[:80]!r}, which MLflow refuses: {problem}."
                )
        self.uses_client = not _is_http(tracking_uri)
        """Whether the mlflow client carries the run (every URI but an http(s) server)."""
        self.prefers_sink_process = self.uses_client  # the client's stores cost ~1 ms a point
        self.tracking_uri = tracking_uri.rstrip("/") if tracking_uri else tracking_uri
        self._base_url = ""
        if self.tracking_uri and not self.uses_client:
            url = httpx.URL(self.tracking_uri)
            if url.username and not token and not username:
                # Credentials inside the URI act as basic auth, as the mlflow client treats them.
                username, password = url.username, url.password
            self._base_url = str(url.copy_with(userinfo=b""))
        self.run_dir = run_dir
        self.run_name = run_name
        self.experiment_name = experiment_name
        self.requested_run_id = run_id
        self.nested = nested
        self.tags = dict(tags or {})
        self.flatten_params = flatten_params
        self.max_log_params = max_log_params
        self.log_artifacts = log_artifacts
        self._token = token
        self._auth = (username, password or "") if username else None
        self._verify = verify
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._api: MlflowBackend | None = None
        self._run: RunInfo | None = None
        self._state: dict[str, Any] = {}
        self._acked_seq = -1
        self._split_seqs: set[int] = set()  # events split into one part per metric
        self.dropped_params = 0

    # --- configuration ------------------------------------------------------------------------

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Chosen by ``report_to="all"`` when a tracking URI is set and the integration is on."""
        disabled = env_flag(env, "DISABLE_MLFLOW_INTEGRATION", lenient=True)
        return env_str(env, "MLFLOW_TRACKING_URI") is not None and not disabled

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from HF's MLflow environment variables (see the module docstring)."""
        if env_flag(env, "DISABLE_MLFLOW_INTEGRATION"):
            raise ConfigurationError(
                "report_to names mlflow but DISABLE_MLFLOW_INTEGRATION is set; unset it or "
                "drop mlflow from report_to."
            )
        uri = env_str(env, "MLFLOW_TRACKING_URI")
        if not _is_http(uri):
            ensure_mlflow_installed(uri)
        tags = _json_tags(env_str(env, "MLFLOW_TAGS"))
        cert = env_str(env, "MLFLOW_TRACKING_SERVER_CERT_PATH")
        if cert is not None and not Path(cert).expanduser().is_file():
            raise ConfigurationError(
                f"MLFLOW_TRACKING_SERVER_CERT_PATH must name a CA bundle file; {cert!r} is not one."
            )
        verify: bool | str = True
        if env_flag(env, "MLFLOW_TRACKING_INSECURE_TLS"):
            if cert is not None:
                raise ConfigurationError(
                    "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH cannot "
                    "both be set."
                )
            verify = False
        elif cert is not None:
            verify = str(Path(cert).expanduser())
        return cls(
            uri,
            run_dir=run_dir,
            run_name=run_name,
            experiment_name=env_str(env, "MLFLOW_EXPERIMENT_NAME"),
            run_id=env_str(env, "MLFLOW_RUN_ID"),
            nested=env_flag(env, "MLFLOW_NESTED_RUN"),
            tags=tags,
            flatten_params=env_flag(env, "MLFLOW_FLATTEN_PARAMS"),
            max_log_params=env_int(env, "MLFLOW_MAX_LOG_PARAMS"),
            log_artifacts=env_flag(env, "HF_MLFLOW_LOG_ARTIFACTS"),
            token=env_str(env, "MLFLOW_TRACKING_TOKEN"),
            username=env_str(env, "MLFLOW_TRACKING_USERNAME"),
            password=env_str(env, "MLFLOW_TRACKING_PASSWORD"),
            verify=verify,
            timeout=float(env_int(env, "MLFLOW_HTTP_REQUEST_TIMEOUT", minimum=1) or 120),
        )

    # --- sink interface -----------------------------------------------------------------------

    async def open(self) -> None:
        """Prepare the client only; the run is resolved at the first write, so a server that
        is down at start is retried like any other failed delivery."""
        self._state = load_state(self.run_dir / STATE_FILE)
        if self.uses_client:
            # Without a URI, the default store this run first resolved to (MLflow's is relative
            # to the working directory), so evaluate() and `trainbus sync` find the same run.
            saved = self._state.get(DEFAULT_URI_KEY)
            api = ClientApi(self.tracking_uri or (saved if isinstance(saved, str) else None))
            self._api = api
            uri = await api.connect()  # Databricks without credentials fails here, once
            if self.tracking_uri is None:
                self._state[DEFAULT_URI_KEY] = uri
            log.info("mlflow sink opened", tracking_uri=redact_url(uri), client="mlflow")
            return
        headers = {"User-Agent": "trainbus"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        verify: bool | ssl.SSLContext = (
            self._verify
            if isinstance(self._verify, bool)
            else (ssl.create_default_context(cafile=self._verify))
        )
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers,
            auth=self._auth,
            verify=verify,
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
            transport=self._transport,
        )
        # Where the server does not proxy artifacts, files go straight to the store.
        self._api = MlflowApi(self._client, unproxied=ClientApi(self.tracking_uri).upload_file)
        log.info("mlflow sink opened", tracking_uri=redact_url(self.tracking_uri or ""))

    async def write(self, batch: Sequence[Event]) -> None:
        """Deliver params and tags, then metrics, then artifacts, then the final status."""
        api = self._require_api()
        self._resume_watermark(batch)
        started = next((e for e in batch if isinstance(e, RunStarted)), None)
        run = await self._ensure_run(api, batch[0] if batch else None, started)
        if started is not None and not self._state.get("params_logged"):
            await self._log_params(api, run, started)
        # Artifacts and the final status go out beside the metrics, not after them: the last
        # batch of a run then costs one round trip, not two (MLflow takes metrics for a run
        # already marked finished). A retry sends all three again; each is idempotent.
        errors: list[Exception] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_collect, errors, self._files_and_status(api, run, batch))
            await _collect(
                errors,
                self._log_metrics(api, run, [e for e in batch if isinstance(e, (Log, Predict))]),
            )
        if errors:
            sink_errors = [e for e in errors if isinstance(e, SinkError)]
            raise _most_telling(sink_errors) if len(sink_errors) == len(errors) else errors[0]
        if batch:
            last = batch[-1].seq
            # A part of a split event is not the whole event: its other parts are still to come.
            self._acked_seq = max(self._acked_seq, last - 1 if last in self._split_seqs else last)
            self._split_seqs = {seq for seq in self._split_seqs if seq > self._acked_seq}
            # Kept on disk too: a batch re-sent after a crash adds no points, even to a store
            # that keeps duplicates (the file store).
            self._state[ACKED_KEY] = {"run": batch[-1].run_id, "seq": self._acked_seq}
            save_state(self.run_dir / STATE_FILE, self._state)

    async def _files_and_status(
        self, api: MlflowBackend, run: RunInfo, batch: Sequence[Event]
    ) -> None:
        """The batch's checkpoints, registry pushes and status changes, in the batch's order."""
        for event in batch:
            if isinstance(event, Artifact) and self._wants(event):
                uploaded = await self._upload(api, run, event)
                if event.register_as and uploaded:
                    await self._register(api, run, event)
                elif event.register_as:
                    self.quarantine(event, "pushed model files unreadable", key=event.path)
            elif isinstance(event, RunFinished):
                status = _STATUS.get(event.status, "KILLED")
                await api.update_run(run.run_id, status=status, end_ms=_ms(event.time))
                log.info("mlflow run ended", run_id=run.run_id, status=status)
                parent = self._state.get(SEARCH_RUN_KEY)
                if isinstance(parent, str):  # the search's run ends as its latest trial did
                    await api.update_run(parent, status=status, end_ms=_ms(event.time))

    def split(self, batch: Sequence[Event], error: PermanentSinkError) -> Sequence[Sequence[Event]]:
        """Halves of a batch the server refused, down to one part per metric of a single
        ``Log``; nothing when the refusal is about the run or the credentials."""
        if not refusal_is_about_points(error):
            return ()
        if len(batch) == 1 and isinstance(batch[0], Log):
            event = batch[0]
            keys = [key for key, _ in numeric_items(event.logs)]
            if len(keys) < 2:
                return ()
            self._split_seqs.add(event.seq)
            return [[msgspec.structs.replace(event, logs={k: event.logs[k]})] for k in keys]
        return super().split(batch, error)

    async def close(self) -> None:
        self._api = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- internals ----------------------------------------------------------------------------

    def _resume_watermark(self, batch: Sequence[Event]) -> None:
        """Skip what an earlier process of this run saw acknowledged (same bus run only)."""
        saved = self._state.get(ACKED_KEY)
        if self._acked_seq >= 0 or not batch or not isinstance(saved, dict):
            return
        if saved.get("run") == batch[0].run_id and isinstance(saved.get("seq"), int):
            self._acked_seq = saved["seq"]

    def _wants(self, event: Artifact) -> bool:
        if event.register_as:  # a push to the model registry: always uploaded
            return True
        return self.log_artifacts and event.kind in self.artifact_kinds

    def _require_api(self) -> MlflowBackend:
        if self._api is None:
            raise RuntimeError("MLflowSink.write() called before open()")
        return self._api

    @property
    def run_id(self) -> str | None:
        """The MLflow run this sink writes to, once known."""
        return self._run.run_id if self._run else None

    async def _ensure_run(
        self, api: MlflowBackend, first: Event | None, started: RunStarted | None
    ) -> RunInfo:
        if self._run is not None:
            return self._run
        run: RunInfo | None = None
        saved = self._state.get("run_id")
        if saved:
            run = await api.get_run(str(saved))
        if run is None and self.requested_run_id and not self.nested:
            run = await api.get_run(self.requested_run_id)
            if run is None:
                raise PermanentSinkError(
                    f"MLFLOW_RUN_ID names run {self.requested_run_id!r}, which the server "
                    "does not know"
                )
        bus_run_id = first.run_id if first is not None else ""
        if run is None:
            experiment_id = (
                await api.experiment_id(self.experiment_name) if self.experiment_name else "0"
            )
            if bus_run_id:
                run = await api.find_run(experiment_id, RUN_TAG, bus_run_id)
            if run is None:
                run = await self._create_run(api, experiment_id, bus_run_id, started)
        elif run.status != "RUNNING" and started is not None:
            await api.update_run(run.run_id, status="RUNNING")
        self._run = run
        self._state.update(run_id=run.run_id, experiment_id=run.experiment_id)
        save_state(self.run_dir / STATE_FILE, self._state)
        log.info("mlflow run ready", run_id=run.run_id, experiment_id=run.experiment_id)
        return run

    async def _create_run(
        self, api: MlflowBackend, experiment_id: str, bus_run_id: str, started: RunStarted | None
    ) -> RunInfo:
        run_name = (started.run_name if started is not None else "") or self.run_name
        # The tags mlflow.start_run gives a run (user, source, git), then MLFLOW_TAGS over them.
        found = await anyio.to_thread.run_sync(
            functools.partial(context_tags, use_mlflow=self.uses_client)
        )
        tags = {k: _clip(v, MAX_TAG_VALUE_LENGTH) for k, v in {**found, **self.tags}.items()}
        if bus_run_id:
            tags[RUN_TAG] = bus_run_id
        if run_name:
            tags["mlflow.runName"] = run_name
        if self.nested and self.requested_run_id:
            tags[PARENT_TAG] = self.requested_run_id
        start = started.time if started is not None else time.time()
        trial = started.trial if started is not None else None
        if trial is not None:
            search = await self._search_run(api, experiment_id, trial, _ms(start), dict(tags))
            run_name = trial.name
            tags.update({PARENT_TAG: search.run_id, TRIAL_TAG: str(trial.number)})
            tags["mlflow.runName"] = run_name
        return await api.create_run(
            experiment_id, run_name=run_name, start_ms=_ms(start), tags=tags
        )

    async def _search_run(
        self,
        api: MlflowBackend,
        experiment_id: str,
        trial: TrialInfo,
        start_ms: int,
        tags: dict[str, str],
    ) -> RunInfo:
        """The parent run of ``trial``'s search: the one an earlier trial created (found by its
        tag), else a new one; running again while this trial runs.

        Args:
            tags: the trial run's own tags (context, ``MLFLOW_TAGS``, the nesting under
                ``MLFLOW_RUN_ID``), which the parent shares, less the trial run's identity.
        """
        search = await api.find_run(experiment_id, SEARCH_TAG, trial.search_id)
        if search is None:
            tags.pop(RUN_TAG, None)
            name = _clip(trial.search, MAX_TAG_VALUE_LENGTH)
            tags.update({SEARCH_TAG: trial.search_id, "mlflow.runName": name})
            search = await api.create_run(
                experiment_id, run_name=name, start_ms=start_ms, tags=tags
            )
            log.info("mlflow search run created", run_id=search.run_id, search=trial.search)
        elif search.status != "RUNNING":
            await api.update_run(search.run_id, status="RUNNING")
        self._state[SEARCH_RUN_KEY] = search.run_id
        return search

    async def _log_params(self, api: MlflowBackend, run: RunInfo, started: RunStarted) -> None:
        merged: dict[str, Any] = {**redact(started.hparams), **redact(started.config)}
        if self.flatten_params:
            merged = flatten(merged)
        params: list[dict[str, str]] = []
        for key, value in merged.items():
            text = str(value)  # what mlflow.log_params stores, as in Hugging Face's callback
            name = sanitize_key(str(key))
            problem = name_problem(name)
            if problem is None and len(text) > MAX_PARAM_VALUE_LENGTH:
                problem = f"value longer than MLflow's {MAX_PARAM_VALUE_LENGTH} characters"
            if problem is not None:
                self.dropped_params += 1
                self.quarantine(started, f"param {problem}", key=name)
                log.warning("mlflow param refused, dropped", param=name[:80], problem=problem)
                continue
            params.append({"key": name, "value": text})
        if self.max_log_params is not None:
            params = params[: self.max_log_params]
        if self.tags:
            # A resumed run (MLFLOW_RUN_ID) was not created here, so its tags are set now, as
            # HF's callback does after the params; setting a tag again is harmless.
            tags = [
                {"key": k, "value": _clip(v, MAX_TAG_VALUE_LENGTH)} for k, v in self.tags.items()
            ]
            for payload in chunk_batches(tags=tags):
                await api.log_batch(run.run_id, payload)
        for payload in chunk_batches(params=params):
            try:
                await api.log_batch(run.run_id, payload)
            except PermanentSinkError as exc:
                # A resumed run may hold other values for some params; that must not cost
                # the metrics that follow, so report it and go on.
                self.dropped_params += len(payload.params)
                log.warning("mlflow refused params", count=len(payload.params), error=str(exc))
        self._state["params_logged"] = True
        save_state(self.run_dir / STATE_FILE, self._state)

    async def _log_metrics(
        self, api: MlflowBackend, run: RunInfo, logs: list[Log | Predict]
    ) -> None:
        entries: list[dict[str, Any]] = []
        owners: list[int] = []  # event seq of each entry, to advance the watermark per chunk
        for event in logs:
            if event.seq <= self._acked_seq:
                continue
            stamp = _ms(event.time)
            values = event.logs if isinstance(event, Log) else event.metrics
            for key, value in numeric_items(values):
                name = _sanitize(key)
                problem = _name_problem(name)
                if problem is not None:
                    self.quarantine(event, problem, key=name)
                    continue
                entries.append(metric_entry(name, value, stamp, event.global_step))
                owners.append(event.seq)
        chunks = list(chunk_batches(metrics=entries))
        if not chunks:
            return
        # Two requests in flight keep the server busy while the next body is built and the
        # last answer parsed; the watermark only covers the prefix of chunks that all landed.
        done = [False] * len(chunks)
        errors: list[SinkError] = []
        limiter = anyio.CapacityLimiter(PIPELINE)

        async def send(index: int) -> None:
            async with limiter:
                if errors:
                    return
                try:
                    await api.log_batch(run.run_id, chunks[index])
                except SinkError as exc:
                    errors.append(exc)
                    return
            done[index] = True

        async with anyio.create_task_group() as tg:
            for index in range(len(chunks)):
                tg.start_soon(send, index)
        sent = 0
        for index, chunk in enumerate(chunks):
            if not done[index]:
                break
            sent += len(chunk.metrics)
        if sent:
            # Events whose every point is acknowledged are skipped if this batch is retried.
            last = owners[sent - 1]
            complete = (sent == len(owners) or owners[sent] != last) and (
                last not in self._split_seqs
            )
            self._acked_seq = max(self._acked_seq, last if complete else last - 1)
        if errors:
            raise _most_telling(errors)

    def _artifact_name(self, event: Artifact) -> str:
        """Where an ``Artifact`` event's files go in the run's artifacts."""
        return event.name or Path(event.path).name

    def _artifact_root(self) -> Path:
        """Where an ``Artifact`` event's files must lie: the run's output directory."""
        return output_root(self.run_dir)

    async def _upload(self, api: MlflowBackend, run: RunInfo, event: Artifact) -> bool:
        """Upload the artifact's files (those not uploaded yet); whether they were all there."""
        source = Path(event.path)
        base = self._artifact_name(event)
        uploaded: list[str] = self._state.setdefault("artifacts", [])
        if not source.exists():
            log.warning("mlflow artifact missing, skipped", path=str(source))
            return False
        try:
            files = confined_files(source, self._artifact_root(), what="artifact path")
            safe_relative_name(base, what="artifact name")
        except ConfigurationError as exc:
            log.warning("mlflow artifact refused, skipped", reason=str(exc))
            return False
        source = source.resolve()
        for file in files:
            rel = base if file == source else f"{base}/{file.relative_to(source).as_posix()}"
            stat = file.stat()
            marker = f"{rel}:{stat.st_size}:{stat.st_mtime_ns}"
            if marker in uploaded:
                continue
            await api.upload_file(run.artifact_uri, rel, file)
            uploaded.append(marker)
        save_state(self.run_dir / STATE_FILE, self._state)
        log.info("mlflow artifact uploaded", name=base, files=len(files))
        return True

    async def _register(self, api: MlflowBackend, run: RunInfo, event: Artifact) -> None:
        """Register the uploaded artifact as a new version of ``event.register_as``, once."""
        name = event.register_as
        push = f"{event.run_id}:{event.seq}"
        registered: dict[str, str] = self._state.setdefault(REGISTERED_KEY, {})
        if push in registered:
            return
        source = f"{run.artifact_uri.rstrip('/')}/{self._artifact_name(event)}"
        await api.create_registered_model(name)
        version = await api.find_model_version(name, run.run_id, PUSH_TAG, push)
        if version is None:
            tags = {PUSH_TAG: push, RUN_TAG: event.run_id}
            version = await api.create_model_version(
                name, source=source, run_id=run.run_id, tags=tags
            )
        if version.status == "PENDING_REGISTRATION":
            raise RetryableSinkError(f"MLflow model {name!r} version {version.version} is pending")
        if version.status == "FAILED_REGISTRATION":
            raise PermanentSinkError(
                f"MLflow refused to register model {name!r} version {version.version}"
            )
        registered[push] = version.version
        save_state(self.run_dir / STATE_FILE, self._state)
        log.info("mlflow model registered", name=name, version=version.version, source=source)


async def _collect(errors: list[Exception], work: Coroutine[Any, Any, None]) -> None:
    """Await ``work``, keeping what it raises in ``errors`` (one error for the runtime, never an
    exception group)."""
    try:
        await work
    except Exception as exc:
        errors.append(exc)


def _most_telling(errors: Sequence[SinkError]) -> SinkError:
    """One error for the runtime: a permanent one wins, else the longest Retry-After."""
    permanent = [e for e in errors if isinstance(e, PermanentSinkError)]
    if permanent:
        return permanent[0]
    return max(errors, key=lambda e: getattr(e, "retry_after", None) or 0.0)


def _is_http(uri: str | None) -> bool:
    return uri is not None and uri.startswith(("http://", "https://"))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _json_tags(raw: str | None) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        tags = json.loads(raw)
    except json.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict):
        raise ConfigurationError(
            f"MLFLOW_TAGS must be a JSON object of tag names to values, got {raw[:80]!r}."
        )
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}
