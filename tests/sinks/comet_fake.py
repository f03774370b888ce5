"""A local stand-in for Comet's REST API v2, for tests only (no Comet server can run here).

It implements just the endpoints the Comet sink uses and checks each request against Comet's
documented write API: the ``Authorization`` header carries the API key, bodies have exactly the
documented fields with the documented types, and the experiment key exists. A request that does
not match gets HTTP 400 with the reason, and is kept in ``rejected`` so tests can assert none.
"""

from __future__ import annotations

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

_NUMBER = (int, float)
_SCHEMAS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    # endpoint: field -> (types, required)
    "write/experiment/create": {
        "workspaceName": (str, True),
        "projectName": (str, True),
        "experimentName": (str, False),
    },
    "write/experiment/metric": {
        "experimentKey": (str, True),
        "metricName": (str, True),
        "metricValue": (_NUMBER, True),
        "step": (int, False),
        "epoch": (_NUMBER, False),
        "timestamp": (int, False),
        "context": (str, False),
    },
    "write/experiment/parameter": {
        "experimentKey": (str, True),
        "parameterName": (str, True),
        "parameterValue": ((str, int, float), True),
        "step": (int, False),
    },
    "write/experiment/log-other": {
        "experimentKey": (str, True),
        "key": (str, True),
        "value": ((str, int, float), True),
    },
    "write/experiment/tags": {"experimentKey": (str, True), "addedTags": (list, True)},
    "write/experiment/set-start-end-time": {
        "experimentKey": (str, True),
        "startTimeMillis": (int, False),
        "endTimeMillis": (int, False),
    },
}


@dataclass
class FakeExperiment:
    workspace: str
    project: str
    name: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    others: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    times: dict[str, int] = field(default_factory=dict)
    assets: dict[str, bytes] = field(default_factory=dict)


class FakeComet:
    """Run with ``with FakeComet(api_key) as comet: ... comet.url``."""

    def __init__(self, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.experiments: dict[str, FakeExperiment] = {}
        self.rejected: list[str] = []
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.fail_requests: set[int] = set()
        self._count = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/"

    def __enter__(self) -> FakeComet:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as Comet's servers do: HTTP/1.0 would make every client reconnect per
            # request. Headers and body go out in two writes; without Nagle neither waits.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._dispatch(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                fake._dispatch(self, self.rfile.read(length))

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

    def _dispatch(self, h: BaseHTTPRequestHandler, raw: bytes | None) -> None:
        parts = urlsplit(h.path)
        if parts.path == "/_fake/experiments":
            with self._lock:
                dump = {
                    key: {"metrics": [[m["metricName"], m["step"]] for m in exp.metrics]}
                    for key, exp in self.experiments.items()
                }
            return self._reply(h, 200, dump)
        prefix = "/api/rest/v2/"
        if not parts.path.startswith(prefix):
            return self._reject(h, 404, f"not a REST v2 path: {parts.path}")
        endpoint = parts.path[len(prefix) :]
        if h.headers.get("Authorization") != self.api_key:
            return self._reject(h, 401, "missing or wrong Authorization header")
        with self._lock:
            self._count += 1
            number = self._count
            self.calls[endpoint] += 1
        if number in self.fail_requests:
            return self._reply(h, 500, {"msg": "scripted failure"})
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if endpoint == "experiment/metadata" and raw is None:
            key = query.get("experimentKey", "")
            if key not in self.experiments:
                return self._reply(h, 400, {"msg": "No such experiment"})
            exp = self.experiments[key]
            return self._reply(h, 200, {"experimentKey": key, "projectName": exp.project})
        if endpoint == "write/experiment/upload-asset" and raw is not None:
            return self._upload(h, query, raw)
        schema = _SCHEMAS.get(endpoint)
        if schema is None or raw is None:
            return self._reject(h, 404, f"endpoint not implemented: {h.command} {endpoint}")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._reject(h, 400, f"{endpoint}: body is not JSON")
        problem = _check(schema, body)
        if problem:
            return self._reject(h, 400, f"{endpoint}: {problem}")
        if endpoint == "write/experiment/create":
            key = uuid.uuid4().hex
            with self._lock:
                self.experiments[key] = FakeExperiment(
                    body["workspaceName"], body["projectName"], body.get("experimentName", "")
                )
            return self._reply(h, 200, {"experimentKey": key, "link": f"{self.url}x/{key}"})
        found = self.experiments.get(body["experimentKey"])
        if found is None:
            return self._reject(h, 400, f"{endpoint}: unknown experimentKey")
        exp = found
        with self._lock:
            if endpoint.endswith("/metric"):
                exp.metrics.append(body)
            elif endpoint.endswith("/parameter"):
                exp.params[body["parameterName"]] = body["parameterValue"]
            elif endpoint.endswith("/log-other"):
                exp.others[body["key"]] = body["value"]
            elif endpoint.endswith("/tags"):
                exp.tags.extend(body["addedTags"])
            else:
                exp.times.update({k: v for k, v in body.items() if k.endswith("Millis")})
        return self._reply(h, 200, {"msg": "Saved"})

    def _upload(self, h: BaseHTTPRequestHandler, query: dict[str, str], raw: bytes) -> None:
        exp = self.experiments.get(query.get("experimentKey", ""))
        if exp is None or not query.get("fileName"):
            return self._reject(h, 400, "upload-asset needs experimentKey and fileName")
        header = f"Content-Type: {h.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + raw)
        files = [
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "file"
        ]
        if len(files) != 1:
            return self._reject(h, 400, "upload-asset needs one multipart part named 'file'")
        with self._lock:
            exp.assets[query["fileName"]] = bytes(files[0].get_payload(decode=True))
        return self._reply(h, 200, {"msg": "Saved"})


def _check(schema: dict[str, tuple[Any, bool]], body: Any) -> str:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    unknown = set(body) - set(schema)
    if unknown:
        return f"undocumented fields {sorted(unknown)}"
    for name, (types, required) in schema.items():
        if name not in body:
            if required:
                return f"missing required field {name}"
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"field {name} has the wrong type ({type(value).__name__})"
    return ""


def main() -> None:
    """``python -m tests.sinks.comet_fake [API_KEY]``: serve on a free port until stopped.

    Prints the URL once listening. ``GET /_fake/experiments`` returns what was recorded (for
    benchmarks that run the fake in its own process).
    """
    import signal
    import sys

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeComet(sys.argv[1] if len(sys.argv) > 1 else "test-key") as fake:
        print(fake.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
