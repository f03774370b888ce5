"""MLflow's tracking REST API (``/api/2.0/mlflow``), spoken with httpx instead of the client.

Payload builders are pure functions, so the limits are testable without a server; ``MlflowApi``
is the thin I/O edge. Every request runs inside ``map_errors()``, so callers only ever see
``RetryableSinkError`` / ``PermanentSinkError``.

Limits enforced here are the server's (``mlflow.utils.validation``): at most 1000 metrics,
100 params and 100 tags per ``runs/log-batch``, 1000 entities in all and 1 MB per request;
keys up to 250 characters, param values up to 6000, tag values up to 8000. A metric, param or
tag name may hold only letters, digits, ``_ - . : /`` and spaces, and must be a normalised
relative path (no ``..``, ``.``, ``//``, leading or trailing ``/``), since stores may use names as
file names. Metric values may be NaN or infinite: the server stores NaN as such and clamps
infinities to the largest double, so such points are sent, not refused.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import quote, urlsplit

import anyio
import httpx
import msgspec

from trainbus.bus._errors import PermanentSinkError
from trainbus.sinks._http import map_errors

__all__ = [
    "MAX_ENTITIES_PER_BATCH",
    "MAX_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_REQUEST_BYTES",
    "MAX_TAG_VALUE_LENGTH",
    "ArtifactWriter",
    "BatchPayload",
    "MlflowApi",
    "MlflowBackend",
    "ModelVersionInfo",
    "RunInfo",
    "chunk_batches",
    "is_proxied",
    "metric_entry",
    "name_problem",
    "refusal_is_about_points",
    "version_filter",
]

MAX_METRICS_PER_BATCH: Final = 1000
MAX_PARAMS_TAGS_PER_BATCH: Final = 100
MAX_ENTITIES_PER_BATCH: Final = 1000
MAX_REQUEST_BYTES: Final = 1_000_000
MAX_KEY_LENGTH: Final = 250
MAX_PARAM_VALUE_LENGTH: Final = 6000
MAX_TAG_VALUE_LENGTH: Final = 8000

_REQUEST_BUDGET: Final = 900_000  # bytes; margin under the 1 MB limit for JSON framing
_ENTRY_OVERHEAD: Final = 64  # bytes of JSON around one key/value entry, generously
_CHUNK: Final = 1 << 20
_encoder: Final = msgspec.json.Encoder()
_NAME: Final = re.compile(r"[/\w.\- :]*")
_RUN_LEVEL_CODES: Final = frozenset(
    {"INVALID_STATE", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)


def name_problem(name: str) -> str | None:
    """Why the server would refuse ``name`` as a metric, param or tag name; ``None`` if it would
    not (the rules of ``mlflow.utils.validation``, see the module docstring)."""
    if len(name) > MAX_KEY_LENGTH:
        return f"name longer than MLflow's {MAX_KEY_LENGTH} characters ({len(name)})"
    if not _NAME.fullmatch(name):
        return "name holds characters MLflow refuses (allowed: letters, digits, _ - . : / space)"
    normal = posixpath.normpath(name)
    if normal != name or normal == "." or normal.startswith(("..", "/")):
        return f"name is a path MLflow refuses (it resolves to {normal!r})"
    return None


def refusal_is_about_points(exc: PermanentSinkError) -> bool:
    """Whether a refused ``log-batch`` may be about some of its points (HTTP 400, invalid
    value) rather than the run or the credentials, so splitting the batch can help."""
    if exc.status not in (None, 400):
        return False
    return _error_code(exc) not in _RUN_LEVEL_CODES


def metric_entry(key: str, value: float, timestamp_ms: int, step: int) -> dict[str, Any]:
    """One metric point; non-finite values use protobuf-JSON spellings the server accepts."""
    if math.isfinite(value):
        number: float | str = value
    elif math.isnan(value):
        number = "NaN"
    else:
        number = "Infinity" if value > 0 else "-Infinity"
    return {"key": key, "value": number, "timestamp": timestamp_ms, "step": step}


@dataclass
class BatchPayload:
    """One ``runs/log-batch`` request body, within every server limit."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    params: list[dict[str, str]] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    size: int = 0

    def entities(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)

    def body(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "metrics": self.metrics, "params": self.params, "tags": self.tags}


def chunk_batches(
    metrics: Sequence[dict[str, Any]] = (),
    params: Sequence[dict[str, str]] = (),
    tags: Sequence[dict[str, str]] = (),
) -> Iterator[BatchPayload]:
    """Split entries into as few ``log-batch`` bodies as the limits allow, order kept."""
    current = BatchPayload()
    for kind, entries, limit in (
        ("params", params, MAX_PARAMS_TAGS_PER_BATCH),
        ("tags", tags, MAX_PARAMS_TAGS_PER_BATCH),
        ("metrics", metrics, MAX_METRICS_PER_BATCH),
    ):
        for entry in entries:
            size = len(entry["key"]) + _ENTRY_OVERHEAD
            value = entry["value"]
            if isinstance(value, str):
                size += len(value.encode())
            bucket: list[Any] = getattr(current, kind)
            if (
                len(bucket) >= limit
                or current.entities() >= MAX_ENTITIES_PER_BATCH
                or current.size + size > _REQUEST_BUDGET
            ):
                yield current
                current = BatchPayload()
                bucket = getattr(current, kind)
            bucket.append(entry)
            current.size += size
    if current.entities():
        yield current


@dataclass(frozen=True)
class RunInfo:
    """What the sink needs to know about a remote run."""

    run_id: str
    experiment_id: str
    artifact_uri: str
    status: str


@dataclass(frozen=True)
class ModelVersionInfo:
    """A version of a registered model, as the registry reports it."""

    name: str
    version: str
    status: str
    """``READY``, ``PENDING_REGISTRATION`` or ``FAILED_REGISTRATION``."""
    source: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)


def _version_info(payload: dict[str, Any]) -> ModelVersionInfo:
    tags = payload.get("tags") or []
    return ModelVersionInfo(
        name=str(payload["name"]),
        version=str(payload["version"]),
        status=str(payload.get("status", "")),
        source=str(payload.get("source", "")),
        run_id=str(payload.get("run_id", "")),
        tags={str(t["key"]): str(t.get("value", "")) for t in tags},
    )


def version_filter(name: str, run_id: str) -> str:
    """The registry search filter for the versions of ``name`` made from run ``run_id``."""
    escaped = name.replace("'", "\\'")
    return f"name='{escaped}' and run_id='{run_id}'"


def _run_info(payload: dict[str, Any]) -> RunInfo:
    info = payload["run"]["info"]
    return RunInfo(
        run_id=str(info.get("run_id") or info["run_uuid"]),
        experiment_id=str(info["experiment_id"]),
        artifact_uri=str(info.get("artifact_uri", "")),
        status=str(info.get("status", "")),
    )


def _error_code(exc: PermanentSinkError) -> str:
    try:
        return str(msgspec.json.decode(exc.body.encode()).get("error_code", ""))
    except (msgspec.DecodeError, AttributeError):
        return ""


ArtifactWriter: TypeAlias = Callable[[str, str, Path], Awaitable[None]]
"""Writes one file (``artifact_uri, artifact_path, local``) to an artifact store."""


class MlflowBackend(Protocol):
    """The calls the MLflow sink makes, over REST (``MlflowApi``) or the mlflow client
    (``trainbus.sinks._mlflow_client.ClientApi``); both raise only the runtime's errors."""

    async def experiment_id(self, name: str) -> str: ...
    async def get_run(self, run_id: str) -> RunInfo | None: ...
    async def find_run(self, experiment_id: str, tag: str, value: str) -> RunInfo | None: ...
    async def create_run(
        self, experiment_id: str, *, run_name: str, start_ms: int, tags: dict[str, str]
    ) -> RunInfo: ...
    async def update_run(self, run_id: str, *, status: str, end_ms: int | None = None) -> None: ...
    async def log_batch(self, run_id: str, payload: BatchPayload) -> None: ...
    async def upload_file(self, artifact_uri: str, artifact_path: str, local: Path) -> None: ...
    async def create_registered_model(self, name: str) -> None: ...
    async def find_model_version(
        self, name: str, run_id: str, tag: str, value: str
    ) -> ModelVersionInfo | None: ...
    async def create_model_version(
        self, name: str, *, source: str, run_id: str, tags: dict[str, str]
    ) -> ModelVersionInfo: ...


class MlflowApi:
    """The handful of tracking-server calls the MLflow sink makes.

    Args:
        client: the HTTP client, its base URL the tracking server.
        unproxied: writes a file where the server does not proxy artifacts (the run's artifact
            URI is a path, ``s3://`` ...): the mlflow client's artifact repository. ``None``
            refuses such uploads.
    """

    def __init__(self, client: httpx.AsyncClient, unproxied: ArtifactWriter | None = None) -> None:
        self._client = client
        self._unproxied = unproxied

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        with map_errors("MLflow"):
            if "json" in kwargs:
                kwargs["content"] = _encoder.encode(kwargs.pop("json"))
                kwargs["headers"] = {"Content-Type": "application/json"}
            response = await self._client.request(method, f"/api/2.0/mlflow/{path}", **kwargs)
            response.raise_for_status()
        if not response.content:
            return {}
        result: dict[str, Any] = msgspec.json.decode(response.content)
        return result

    async def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (tolerating a concurrent create)."""
        for _ in range(2):
            try:
                found = await self._call(
                    "GET", "experiments/get-by-name", params={"experiment_name": name}
                )
                return str(found["experiment"]["experiment_id"])
            except PermanentSinkError as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                created = await self._call("POST", "experiments/create", json={"name": name})
                return str(created["experiment_id"])
            except PermanentSinkError as exc:
                if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise PermanentSinkError(f"MLflow experiment {name!r} can be neither found nor created")

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None`` when the server does not know it."""
        try:
            return _run_info(await self._call("GET", "runs/get", params={"run_id": run_id}))
        except PermanentSinkError as exc:
            if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST" or exc.status == 404:
                return None
            raise

    async def find_run(self, experiment_id: str, tag: str, value: str) -> RunInfo | None:
        """The newest active run of the experiment whose tag ``tag`` equals ``value``."""
        escaped = value.replace("'", "\\'")
        found = await self._call(
            "POST",
            "runs/search",
            json={
                "experiment_ids": [experiment_id],
                "filter": f"tags.`{tag}` = '{escaped}'",
                "max_results": 1,
                "order_by": ["attributes.start_time DESC"],
            },
        )
        runs = found.get("runs") or []
        return _run_info({"run": runs[0]}) if runs else None

    async def create_run(
        self, experiment_id: str, *, run_name: str, start_ms: int, tags: dict[str, str]
    ) -> RunInfo:
        body: dict[str, Any] = {
            "experiment_id": experiment_id,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_name:
            body["run_name"] = run_name
        return _run_info(await self._call("POST", "runs/create", json=body))

    async def update_run(self, run_id: str, *, status: str, end_ms: int | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        await self._call("POST", "runs/update", json=body)

    async def log_batch(self, run_id: str, payload: BatchPayload) -> None:
        await self._call("POST", "runs/log-batch", json=payload.body(run_id))

    async def upload_file(self, artifact_uri: str, artifact_path: str, local: Path) -> None:
        """Upload one file through the server's proxied artifact API (streamed from disk), or
        straight to the artifact store when the server does not proxy it."""
        if self._unproxied is not None and not is_proxied(artifact_uri):
            await self._unproxied(artifact_uri, artifact_path, local)
            return
        root = proxied_artifact_root(artifact_uri)
        url = f"/api/2.0/mlflow-artifacts/artifacts/{root}/{quote(artifact_path)}"
        with map_errors("MLflow artifacts"):
            response = await self._client.put(url, content=_read_chunks(local))
            response.raise_for_status()

    # --- model registry ---------------------------------------------------------------------

    async def create_registered_model(self, name: str) -> None:
        """Create registered model ``name``; one that exists already is fine."""
        try:
            await self._call("POST", "registered-models/create", json={"name": name})
        except PermanentSinkError as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    async def find_model_version(
        self, name: str, run_id: str, tag: str, value: str
    ) -> ModelVersionInfo | None:
        """The version of ``name`` made from ``run_id`` whose tag ``tag`` is ``value``."""
        found = await self._call(
            "GET",
            "model-versions/search",
            params={"filter": version_filter(name, run_id), "max_results": 1000},
        )
        for payload in found.get("model_versions") or []:
            version = _version_info(payload)
            if version.tags.get(tag) == value:
                return version
        return None

    async def create_model_version(
        self, name: str, *, source: str, run_id: str, tags: dict[str, str]
    ) -> ModelVersionInfo:
        """A new version of ``name`` whose files are ``source`` (in run ``run_id``'s artifacts)."""
        body = {
            "name": name,
            "source": source,
            "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        created = await self._call("POST", "model-versions/create", json=body)
        return _version_info(created["model_version"])


def is_proxied(artifact_uri: str) -> bool:
    """Whether the tracking server itself serves this artifact URI (``mlflow-artifacts:``)."""
    return urlsplit(artifact_uri).scheme == "mlflow-artifacts"


def proxied_artifact_root(artifact_uri: str) -> str:
    """``mlflow-artifacts:/1/<run>/artifacts`` -> ``1/<run>/artifacts``; other schemes refused."""
    parts = urlsplit(artifact_uri)
    if parts.scheme != "mlflow-artifacts":
        raise PermanentSinkError(
            f"run artifacts live at {artifact_uri!r}, which the server does not proxy; "
            "uploading there needs the mlflow client: pip install 'trainbus[mlflow]'"
        )
    return parts.path.strip("/")


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(_CHUNK):
            yield chunk
