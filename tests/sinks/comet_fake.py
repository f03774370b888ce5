"""A local stand-in for a Comet server, for tests only: no Comet server can run here.

It speaks the part of Comet's protocol that the ``comet_ml`` SDK uses to log a run, online or
when ``comet upload`` sends an offline archive: the handshake (``/clientlib/logger/add/run``,
``/clientlib/logger/get/run``), status reports, the batch endpoints for metrics and parameters,
system details, ``log-other``, asset uploads and the experiment metadata and tags queries.

Every request is checked, and one that does not match gets an HTTP error and is kept in
``rejected``, so a test asserts that list is empty:

* the API key, in the JSON body where the SDK puts it or in the ``Authorization`` header of the
  batch endpoints;
* batch bodies: each value must have exactly the fields, in JSON types, that the SDK's own
  message classes produce for a batch (``MetricMessage`` / ``ParameterMessage``
  ``.to_batch_message_dict()``, read from the installed SDK when the fake starts);
* the experiment key must exist, except for the handshake that creates it;
* any endpoint not listed above is refused, so a new call by the SDK shows up as a failure.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_EXPERIMENT_ALREADY_EXISTS = 90999  # the SDK's sdk_error_code values (comet_ml.exceptions)
_NO_WRITE_ACCESS_TO_EXPERIMENT = 90210
_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_STR = (str, type(None))


def _sdk_batch_fields() -> dict[str, frozenset[str]]:
    """The field names the installed SDK's message classes send in a batch, per endpoint."""
    from comet_ml.messages import MetricMessage, ParameterMessage

    metric = MetricMessage(context=None)
    metric.set_metric("m", 1.0, step=1, epoch=1)
    parameter = ParameterMessage(context=None)
    parameter.set_param("p", 1, step=None, source="manual")
    return {
        "metric": frozenset(metric.to_batch_message_dict()),
        "parameter": frozenset(parameter.to_batch_message_dict()),
    }


_BATCH_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "metric": {
        "metricName": (str,),
        "metricValue": (int, float, str),
        "step": _OPTIONAL_INT,
        "epoch": _OPTIONAL_NUMBER,
        "context": _OPTIONAL_STR,
        "timestamp": (int,),
    },
    "parameter": {
        "parameterName": (str,),
        "parameterValue": (int, float, str, bool, list, type(None)),
        "step": _OPTIONAL_INT,
        "source": _OPTIONAL_STR,
        "context": _OPTIONAL_STR,
        "timestamp": (int,),
    },
}


@dataclass
class FakeExperiment:
    """What the fake recorded for one experiment."""

    workspace: str
    project: str
    offline: bool
    metrics: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    param_posts: list[str] = field(default_factory=list)
    others: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, bytes] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)
    extra: list[dict[str, Any]] = field(default_factory=list)
    handshakes: int = 0

    @property
    def name(self) -> str:
        return str(self.others.get("Name", ""))


class FakeComet:
    """Run with ``with FakeComet(api_key) as comet: ...``; point the SDK at ``comet.url``
    (``COMET_URL_OVERRIDE``, the server's ``/clientlib/`` address, as Comet documents)."""

    def __init__(self, api_key: str | None = None) -> None:
        # A key of its own by default: the SDK caches its REST client per API key for the life
        # of the process, so a second fake with the same key would be asked at the first's URL.
        self.api_key = api_key or f"test-key-{uuid.uuid4().hex}"
        self.experiments: dict[str, FakeExperiment] = {}
        self.rejected: list[str] = []
        self.calls: defaultdict[str, int] = defaultdict(int)
        self._fields = _sdk_batch_fields()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.root = f"http://127.0.0.1:{self._server.server_port}/"
        self.url = self.root + "clientlib/"

    def __enter__(self) -> FakeComet:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def only(self) -> FakeExperiment:
        """The one experiment recorded (fails the test if there are more or none)."""
        experiments = list(self.experiments.values())
        if len(experiments) != 1:
            raise AssertionError(f"expected one experiment, found {len(experiments)}")
        return experiments[0]

    # --- HTTP plumbing ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Comet's servers do
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._dispatch(self, b"")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                fake._dispatch(self, raw)

        return Handler

    def _reply(self, h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _reject(self, h: BaseHTTPRequestHandler, status: int, reason: str) -> None:
        with self._lock:
            self.rejected.append(reason)
        self._reply(h, status, {"msg": reason, "code": status})

    def _dispatch(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        parts = urlsplit(h.path)
        path = parts.path.lstrip("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.calls[path] += 1
        if path == "_fake/experiments":
            with self._lock:
                dump = {
                    key: {"metrics": [[m["metricName"], m["step"]] for m in exp.metrics]}
                    for key, exp in self.experiments.items()
                }
            return self._reply(h, 200, dump)
        route = _ROUTES.get((h.command, path))
        if route is None:
            return self._reject(h, 404, f"endpoint not implemented: {h.command} {path}")
        body: Any = {}
        if h.command == "POST" and not path.endswith("asset/upload"):
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return self._reject(h, 400, f"{path}: body is not JSON")
            if not isinstance(body, dict):
                return self._reject(h, 400, f"{path}: body is not a JSON object")
        try:
            status, payload = route(self, h, body, query, raw)
        except _Refused as exc:
            return self._reject(h, exc.status, f"{path}: {exc}")
        self._reply(h, status, payload)

    # --- checks -------------------------------------------------------------------------------

    def _body_key(self, body: dict[str, Any]) -> None:
        if body.get("apiKey") != self.api_key:
            raise _Refused(401, "missing or wrong apiKey")

    def _header_key(self, h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization") != self.api_key:
            raise _Refused(401, "missing or wrong Authorization header")

    def _experiment(self, key: Any) -> FakeExperiment:
        found = self.experiments.get(key) if isinstance(key, str) else None
        if found is None:
            raise _Refused(400, f"unknown experimentKey {key!r}")
        return found

    # --- endpoints ----------------------------------------------------------------------------

    def _version(self, *_: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"version": "3.40.0"}

    def _empty(self, *_: Any) -> tuple[int, dict[str, Any]]:
        return 200, {}

    def _add_run(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._body_key(body)
        key = body.get("experimentKey")
        if not isinstance(key, str) or not 32 <= len(key) <= 50 or not key.isalnum():
            raise _Refused(400, f"experimentKey must be 32-50 alphanumerics, got {key!r}")
        with self._lock:
            exp = self.experiments.get(key)
            if exp is not None and not body.get("getOrCreateEnabled"):
                return 400, {
                    "sdk_error_code": _EXPERIMENT_ALREADY_EXISTS,
                    "msg": "experiment already exists",
                }
            if exp is None:
                exp = self.experiments[key] = FakeExperiment(
                    workspace=str(body.get("teamName") or "default"),
                    project=str(body.get("projectName") or "general"),
                    offline=bool(body.get("offline")),
                )
            exp.handshakes += 1
        return 200, self._handshake(key)

    def _get_run(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._body_key(body)
        key = body.get("previousExperiment")
        if key not in self.experiments:
            return 400, {"sdk_error_code": _NO_WRITE_ACCESS_TO_EXPERIMENT, "msg": "not found"}
        with self._lock:
            self.experiments[key].handshakes += 1
        return 200, self._handshake(str(key))

    def _handshake(self, key: str) -> dict[str, Any]:
        return {
            "runId": f"run-{key[:8]}",
            "experimentKey": key,
            "project_id": "project-1",
            "focusUrl": f"{self.root}ws/proj/{key}",
            "lastOffset": 0,
            "featureToggles": [],
        }

    def _status(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._body_key(body)
        self._experiment(body.get("experimentKey"))
        return 200, {
            "is_alive_beat_duration_millis": 60_000,
            "gpu_monitor_interval_millis": 60_000,
            "cpu_monitor_interval_millis": 60_000,
            "pending_rpcs": False,
        }

    def _offline_times(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._body_key(body)
        exp = self._experiment(body.get("experimentKey"))
        with self._lock:
            for name in ("startTimestamp", "endTimestamp"):
                if isinstance(body.get(name), int):
                    exp.times.setdefault("first_" + name, body[name])
                    exp.times[name] = body[name]
        return 200, {}

    def _batch(self, kind: str, h: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._header_key(h)
        exp = self._experiment(body.get("experimentKey"))
        values = body.get("values")
        if set(body) != {"experimentKey", "values"} or not isinstance(values, list):
            raise _Refused(400, f"batch body must be {{experimentKey, values}}, got {sorted(body)}")
        expected, types = self._fields[kind], _BATCH_TYPES[kind]
        for value in values:
            if not isinstance(value, dict) or set(value) != expected:
                got = sorted(value) if isinstance(value, dict) else value
                raise _Refused(400, f"{kind} fields {got} differ from the SDK's {sorted(expected)}")
            for name, allowed in types.items():
                item = value[name]
                if (isinstance(item, bool) and bool not in allowed) or not isinstance(
                    item, allowed
                ):
                    raise _Refused(400, f"{kind} field {name} has type {type(item).__name__}")
        with self._lock:
            if kind == "metric":
                exp.metrics.extend(values)
            else:
                for value in values:
                    exp.params[value["parameterName"]] = value["parameterValue"]
                    exp.param_posts.append(value["parameterName"])
        return 200, {}

    def _metrics(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        return self._batch("metric", h, body)

    def _parameters(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        return self._batch("parameter", h, body)

    def _system(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._header_key(h)
        exp = self._experiment(body.get("experimentKey"))
        with self._lock:
            exp.system.update({k: v for k, v in body.items() if k != "experimentKey"})
        return 200, {}

    def _log_other(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        self._header_key(h)
        exp = self._experiment(body.get("experimentKey"))
        if set(body) != {"experimentKey", "key", "value"} or not isinstance(body["key"], str):
            raise _Refused(400, f"log-other body must be {{experimentKey, key, value}}: {body}")
        with self._lock:
            exp.others[body["key"]] = body["value"]
        return 200, {}

    def _metadata(self, h: Any, body: Any, query: dict[str, str], _: bytes) -> Any:
        self._header_key(h)
        key = query.get("experimentKey", "")
        if key not in self.experiments:
            return 400, {"msg": "No such experiment", "code": 400}
        exp = self.experiments[key]
        return 200, {
            "experimentKey": key,
            "projectName": exp.project,
            "workspaceName": exp.workspace,
        }

    def _rest_write(self, h: Any, body: dict[str, Any], *_: Any) -> tuple[int, dict[str, Any]]:
        """Writes the sink never makes, which transformers' callback makes through the SDK
        (model graph, script file name, git metadata, captured output): kept as received."""
        self._header_key(h)
        exp = self._experiment(body.get("experimentKey"))
        with self._lock:
            exp.extra.append(body)
        return 200, {}

    def _tags(self, h: Any, body: Any, query: dict[str, str], _: bytes) -> Any:
        self._header_key(h)
        self._experiment(query.get("experimentKey"))
        return 200, {"tags": []}

    def _upload(self, h: Any, body: Any, query: dict[str, str], raw: bytes) -> Any:
        exp = self._experiment(query.get("experimentId"))
        name = query.get("fileName")
        if not name:
            raise _Refused(400, "asset upload needs fileName")
        header = f"Content-Type: {h.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + raw)
        files = [
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "file"
        ]
        if len(files) != 1:
            raise _Refused(400, "asset upload needs one multipart part named 'file'")
        with self._lock:
            exp.assets[name] = bytes(files[0].get_payload(decode=True))
        return 200, {}


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "clientlib/isAlive/ver"): FakeComet._version,
    ("GET", "clientlib/health/ping"): FakeComet._empty,
    ("POST", "clientlib/logger/add/run"): FakeComet._add_run,
    ("POST", "clientlib/logger/get/run"): FakeComet._get_run,
    ("POST", "clientlib/status-report/update"): FakeComet._status,
    ("POST", "clientlib/status-report/offline-metadata"): FakeComet._offline_times,
    ("POST", "clientlib/asset/3d-limits"): FakeComet._empty,
    ("POST", "clientlib/notification/experiment"): FakeComet._empty,
    ("POST", "clientlib/notify/event"): FakeComet._empty,
    ("POST", "clientlib/batch/logger/experiment/metric"): FakeComet._metrics,
    ("POST", "clientlib/batch/logger/experiment/parameter"): FakeComet._parameters,
    ("POST", "clientlib/rest/v2/write/experiment/system-details"): FakeComet._system,
    ("POST", "api/rest/v2/write/experiment/log-other"): FakeComet._log_other,
    ("GET", "api/rest/v2/experiment/metadata"): FakeComet._metadata,
    ("GET", "api/rest/v2/experiment/tags"): FakeComet._tags,
    ("POST", "api/rest/v2/write/experiment/file-path"): FakeComet._rest_write,
    ("POST", "api/rest/v2/write/experiment/graph"): FakeComet._rest_write,
    ("POST", "api/rest/v2/write/experiment/git/metadata"): FakeComet._rest_write,
    ("POST", "clientlib/rest/v2/write/experiment/output"): FakeComet._rest_write,
    ("POST", "clientlib/asset/upload"): FakeComet._upload,
}


def main() -> None:
    """``python -m tests.sinks.comet_fake [API_KEY]``: serve on a free port until stopped.

    Prints the server root once listening (the SDK wants ``<root>/clientlib/``).
    ``GET /_fake/experiments`` returns what was recorded (for benchmarks that run the fake in
    its own process).
    """
    import signal
    import sys

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeComet(sys.argv[1] if len(sys.argv) > 1 else None) as fake:
        print(fake.root, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
