"""Comet's REST API v2 write endpoints, spoken with httpx instead of the ``comet_ml`` SDK.

Endpoints used (all under ``<server>/api/rest/v2``, header ``Authorization: <api key>``):

=====================================  ==========================================================
``POST write/experiment/create``       ``workspaceName``, ``projectName``, ``experimentName``
``GET  experiment/metadata``           ``?experimentKey=`` (does the experiment exist?)
``POST write/experiment/metric``       ``experimentKey``, ``metricName``, ``metricValue``,
                                       ``step``, ``epoch``, ``timestamp`` (ms)
``POST write/experiment/parameter``    ``experimentKey``, ``parameterName``, ``parameterValue``
``POST write/experiment/log-other``    ``experimentKey``, ``key``, ``value``
``POST write/experiment/tags``         ``experimentKey``, ``addedTags``
``POST write/experiment/set-start-end-time``  ``experimentKey``, ``startTimeMillis``,
                                       ``endTimeMillis``
``POST write/experiment/upload-asset`` ``?experimentKey=&fileName=&overwrite=true``, multipart
                                       ``file``
=====================================  ==========================================================

The metric endpoint takes one point per request, so the sink keeps several in flight, and the JSON
POSTs go through ``trainbus.sinks._http1`` (kept-alive connections, a prebuilt request head, msgspec
bodies) rather than httpx: a fraction of the CPU per point. httpx still does the rare calls
(``exists``, asset uploads), and all of them when the environment names a proxy for the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import msgspec

from trainbus.bus._errors import PermanentSinkError
from trainbus.sinks._http import map_errors
from trainbus.sinks._http1 import Http1Client

__all__ = [
    "DEFAULT_SERVER",
    "CometApi",
    "Request",
    "create_body",
    "metric_body",
    "other_body",
    "parameter_body",
    "rest_base",
    "tags_body",
    "times_body",
]

DEFAULT_SERVER: Final = "https://www.comet.com/"
REST_PREFIX: Final = "api/rest/v2"
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder()

Request = tuple[str, dict[str, Any]]
"""An endpoint (relative to the REST root) and its JSON body."""


def rest_base(url_override: str | None) -> str:
    """The REST root from ``COMET_URL_OVERRIDE`` (the SDK's ``.../clientlib/`` form accepted)."""
    server = url_override or DEFAULT_SERVER
    parts = urlsplit(server)
    path = parts.path.rstrip("/")
    for suffix in ("/clientlib", "/api/rest/v2", "/api/rest/v2/"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return f"{parts.scheme}://{parts.netloc}{path}/{REST_PREFIX}"


def create_body(workspace: str, project: str, name: str) -> Request:
    body = {"workspaceName": workspace, "projectName": project}
    if name:
        body["experimentName"] = name
    return "write/experiment/create", body


def metric_body(
    key: str, name: str, value: float, *, step: int, epoch: float, timestamp_ms: int
) -> Request:
    return "write/experiment/metric", {
        "experimentKey": key,
        "metricName": name,
        "metricValue": value,
        "step": step,
        "epoch": epoch,
        "timestamp": timestamp_ms,
    }


def parameter_body(key: str, name: str, value: str) -> Request:
    return "write/experiment/parameter", {
        "experimentKey": key,
        "parameterName": name,
        "parameterValue": value,
    }


def other_body(key: str, name: str, value: str) -> Request:
    return "write/experiment/log-other", {"experimentKey": key, "key": name, "value": value}


def tags_body(key: str, tags: list[str]) -> Request:
    return "write/experiment/tags", {"experimentKey": key, "addedTags": tags}


def times_body(key: str, *, start_ms: int | None = None, end_ms: int | None = None) -> Request:
    body: dict[str, Any] = {"experimentKey": key}
    if start_ms is not None:
        body["startTimeMillis"] = start_ms
    if end_ms is not None:
        body["endTimeMillis"] = end_ms
    return "write/experiment/set-start-end-time", body


class CometApi:
    """The few REST calls the Comet sink makes; errors come out as sink errors.

    JSON POSTs go through ``lean`` when given (see the module docstring), else through
    ``client`` on a hand-built path (cached URL, shared headers, msgspec encoding)."""

    def __init__(self, client: httpx.AsyncClient, lean: Http1Client | None = None) -> None:
        self._client = client
        self._lean = lean
        self._headers = httpx.Headers(client.headers)
        self._headers["Content-Type"] = "application/json"
        self._timeout = {"timeout": client.timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}

    async def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one JSON body; returns the JSON object answered ({} for anything else)."""
        content = _encoder.encode(body)
        if self._lean is not None:
            reply = await self._lean.post(endpoint, content, "application/json")
            return _object(reply.body)
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = self._client.base_url.join(endpoint)
        request = httpx.Request(
            "POST", url, headers=self._headers, content=content, extensions=self._timeout
        )
        with map_errors("Comet"):
            response = await self._client.send(request)
            response.raise_for_status()
        return _object(response.content)

    async def exists(self, experiment_key: str) -> bool:
        """Whether the server knows the experiment (404/400 mean no)."""
        try:
            with map_errors("Comet"):
                response = await self._client.get(
                    "experiment/metadata", params={"experimentKey": experiment_key}
                )
                response.raise_for_status()
        except PermanentSinkError as exc:
            if exc.status in (400, 404):
                return False
            raise
        return True

    async def create(self, workspace: str, project: str, name: str) -> str:
        endpoint, body = create_body(workspace, project, name)
        created = await self.post(endpoint, body)
        key = created.get("experimentKey")
        if not isinstance(key, str) or not key:
            raise PermanentSinkError("Comet created an experiment but returned no experimentKey")
        return key

    async def upload_asset(self, experiment_key: str, path: Path, name: str) -> None:
        with map_errors("Comet"), path.open("rb") as handle:
            response = await self._client.post(
                "write/experiment/upload-asset",
                params={"experimentKey": experiment_key, "fileName": name, "overwrite": "true"},
                files={"file": (name, handle, "application/octet-stream")},
            )
            response.raise_for_status()


def _object(content: bytes) -> dict[str, Any]:
    if not content:
        return {}
    try:
        data = _decoder.decode(content)
    except msgspec.DecodeError:
        return {}  # a success with a body that is not JSON: nothing the sink reads from it
    return data if isinstance(data, dict) else {}
