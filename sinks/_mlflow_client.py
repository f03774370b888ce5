"""MLflow through its own client, for every tracking URI that is not an HTTP server.

``file:`` and ``sqlite:`` stores, Databricks (``databricks``, ``databricks://<profile>``) and
MLflow's default store (an unset URI) have no REST API the sink could speak with httpx, so
``ClientApi`` offers the same calls as ``MlflowApi`` on top of ``mlflow.tracking.MlflowClient``.
The client blocks, so every call runs in a worker thread, one at a time, and its exceptions are
translated in one place (``map_client_errors``) into the runtime's retryable and permanent
errors. ``upload_to_repository`` is the one way files reach an artifact store that the tracking
server does not proxy; the REST path uses it too.

``mlflow`` is imported only inside these functions, when the sink first needs it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from trainbus.bus._errors import (
    ConfigurationError,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
)
from trainbus.bus._secrets import redact_url
from trainbus.sinks._mlflow_api import BatchPayload, ModelVersionInfo, RunInfo, version_filter

__all__ = [
    "INSTALL_HINT",
    "ClientApi",
    "ensure_mlflow_installed",
    "map_client_errors",
    "upload_to_repository",
]

INSTALL_HINT: Final = "pip install 'trainbus[mlflow]'"
_T = TypeVar("_T")
_RETRYABLE_CODES: Final = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
    }
)
_DATABRICKS_CREDENTIALS: Final = "Databricks credential"
_TERMINAL: Final = frozenset({"FINISHED", "FAILED", "KILLED"})


def ensure_mlflow_installed(uri: str | None) -> None:
    """Refuse before training when the client path is needed but ``mlflow`` is missing."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        where = f"MLFLOW_TRACKING_URI={redact_url(uri)!r}" if uri else "MLflow's default store"
        raise ConfigurationError(
            f"logging to {where} needs the mlflow client, which is not installed: "
            f"{INSTALL_HINT} (only an http(s) tracking server works without it)."
        )


def _databricks_message(uri: str) -> str:
    profile = uri.partition("://")[2]
    where = f"the profile {profile!r} of ~/.databrickscfg" if profile else "DATABRICKS_HOST"
    return (
        f"MLFLOW_TRACKING_URI={uri!r} needs Databricks credentials and none were found: set "
        "DATABRICKS_HOST and DATABRICKS_TOKEN (or DATABRICKS_CONFIG_PROFILE), or name a "
        f"configured profile as databricks://<profile>; looked for {where}"
    )


@contextlib.contextmanager
def map_client_errors(uri: str) -> Iterator[None]:
    """The mlflow client's failures as the runtime's errors.

    Codes that say the store is busy or failing (a locked SQLite file, an overloaded workspace)
    and file-system or network errors may pass; every other ``MlflowException`` is about the
    request and keeps its error code in ``body``, so ``refusal_is_about_points`` can tell a
    refused point from a refused run. Anything else is a bug and stays as it is.
    """
    try:
        yield
    except SinkError:
        raise
    except OSError as exc:
        raise RetryableSinkError(f"MLflow store unreachable: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            if type(exc).__module__.startswith("sqlalchemy"):
                raise RetryableSinkError(f"MLflow store busy: {exc}") from exc
            raise
        code = str(exc.error_code)
        message = str(exc.message).splitlines()[0] if exc.message else code
        if _DATABRICKS_CREDENTIALS in message:
            raise PermanentSinkError(_databricks_message(uri)) from None
        if code in _RETRYABLE_CODES:
            raise RetryableSinkError(f"MLflow store failed ({code}): {message}") from exc
        body = json.dumps({"error_code": code, "message": message})
        raise PermanentSinkError(f"MLflow refused ({code}): {message}", body=body) from exc


def upload_to_repository(
    artifact_uri: str, artifact_path: str, local: Path, tracking_uri: str
) -> None:
    """Write ``local`` to ``artifact_path`` under the run's ``artifact_uri`` through MLflow's
    artifact repository for that URI (local path, s3, gs, dbfs ...), as ``MlflowClient`` does.
    Blocking: call it from a worker thread."""
    try:
        from mlflow.store.artifact import artifact_repository_registry
        from mlflow.utils import uri as uri_utils
    except ImportError as exc:
        raise PermanentSinkError(
            f"run artifacts live at {artifact_uri!r}, which only the mlflow client can write "
            f"to: {INSTALL_HINT}"
        ) from exc

    # mlflow leaves these untyped: reached through Any.
    profiled: Any = uri_utils.add_databricks_profile_info_to_artifact_uri
    uri = profiled(artifact_uri, tracking_uri)
    repository: Any = artifact_repository_registry.get_artifact_repository(
        uri, tracking_uri=tracking_uri
    )
    folder, _, name = artifact_path.rpartition("/")
    if name == local.name:
        repository.log_artifact(str(local), folder or None)
        return
    # The repository keeps the file's own name; one given another name travels as a copy.
    with tempfile.TemporaryDirectory(prefix="trainbus-mlflow-") as scratch:
        renamed = Path(scratch) / name
        shutil.copyfile(local, renamed)
        repository.log_artifact(str(renamed), folder or None)


def _run_info(run: Any) -> RunInfo:
    info = run.info
    return RunInfo(
        run_id=str(info.run_id),
        experiment_id=str(info.experiment_id),
        artifact_uri=str(info.artifact_uri or ""),
        status=str(info.status),
    )


def _version_info(version: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=str(version.name),
        version=str(version.version),
        status=str(version.status),
        source=str(version.source),
        run_id=str(version.run_id or ""),
        tags={str(k): str(v) for k, v in (version.tags or {}).items()},
    )


class ClientApi:
    """The calls ``MlflowApi`` makes, through ``MlflowClient`` in a worker thread.

    Args:
        tracking_uri: the store, or ``None`` for MLflow's default (resolved by ``connect``
            the way MLflow itself resolves it: ``MLFLOW_TRACKING_URI``, else the default store
            of the installed version, relative to the working directory).
    """

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._limiter = anyio.CapacityLimiter(1)

    async def _call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        with map_client_errors(self.tracking_uri or ""):
            return await anyio.to_thread.run_sync(
                functools.partial(func, *args, **kwargs),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )

    async def connect(self) -> str:
        """Build the client (importing mlflow) and check Databricks credentials; the URI used."""
        await self._call(self._connect)
        return self.tracking_uri or ""

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient, get_tracking_uri

        uri = self.tracking_uri or get_tracking_uri()
        self.tracking_uri = uri
        if uri == "databricks" or uri.startswith("databricks://"):
            from mlflow.utils import databricks_utils

            host_creds: Any = databricks_utils.get_databricks_host_creds  # untyped in mlflow
            host_creds(uri)  # fails here, once, without credentials
        self._client = MlflowClient(tracking_uri=uri)

    async def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (tolerating a concurrent create)."""
        return await self._call(self._experiment_id, name)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(2):
            found = self._client.get_experiment_by_name(name)
            if found is not None:
                return str(found.experiment_id)
            try:
                return str(self._client.create_experiment(name))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise PermanentSinkError(f"MLflow experiment {name!r} can be neither found nor created")

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None`` when the store does not know it."""
        return await self._call(self._get_run, run_id)

    def _get_run(self, run_id: str) -> RunInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return _run_info(self._client.get_run(run_id))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    async def find_run(self, experiment_id: str, tag: str, value: str) -> RunInfo | None:
        """The newest active run of the experiment whose tag ``tag`` equals ``value``."""
        escaped = value.replace("'", "\\'")
        runs = await self._call(
            lambda: self._client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{tag}` = '{escaped}'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        )
        return _run_info(runs[0]) if runs else None

    async def create_run(
        self, experiment_id: str, *, run_name: str, start_ms: int, tags: dict[str, str]
    ) -> RunInfo:
        run = await self._call(
            lambda: self._client.create_run(
                experiment_id, start_time=start_ms, tags=tags, run_name=run_name or None
            )
        )
        return _run_info(run)

    async def update_run(self, run_id: str, *, status: str, end_ms: int | None = None) -> None:
        if status in _TERMINAL:
            await self._call(self._client.set_terminated, run_id, status=status, end_time=end_ms)
        else:
            await self._call(self._client.update_run, run_id, status=status)

    async def log_batch(self, run_id: str, payload: BatchPayload) -> None:
        await self._call(self._log_batch, run_id, payload)

    def _log_batch(self, run_id: str, payload: BatchPayload) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [
            Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m["step"]))
            for m in payload.metrics
        ]
        params = [Param(p["key"], p["value"]) for p in payload.params]
        tags = [RunTag(t["key"], t["value"]) for t in payload.tags]
        self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)

    async def upload_file(self, artifact_uri: str, artifact_path: str, local: Path) -> None:
        """Write one file to the run's artifact store."""
        uri = self.tracking_uri or ""
        await self._call(upload_to_repository, artifact_uri, artifact_path, local, uri)

    async def create_registered_model(self, name: str) -> None:
        """Create registered model ``name``; one that exists already is fine."""
        await self._call(self._create_registered_model, name)

    def _create_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    async def find_model_version(
        self, name: str, run_id: str, tag: str, value: str
    ) -> ModelVersionInfo | None:
        """The version of ``name`` made from ``run_id`` whose tag ``tag`` is ``value``."""
        found = await self._call(self._client.search_model_versions, version_filter(name, run_id))
        for version in found:
            if version.tags.get(tag) == value:
                return _version_info(version)
        return None

    async def create_model_version(
        self, name: str, *, source: str, run_id: str, tags: dict[str, str]
    ) -> ModelVersionInfo:
        """A new version of ``name`` whose files are ``source`` (in run ``run_id``'s artifacts)."""
        created = await self._call(
            lambda: self._client.create_model_version(name, source, run_id=run_id, tags=tags)
        )
        return _version_info(created)

    async def aclose(self) -> None:
        """Nothing to release: the client holds no connection the sink must close."""
        self._client = None
