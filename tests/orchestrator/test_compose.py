"""``docker-compose.yml`` declares what the code expects: Docker cannot run here, so read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from trainbus.orchestrator.cli import build_parser
from trainbus.orchestrator.registry import resolve_report_to

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` and bare ``--name`` items of a command list."""
    out = {}
    for item in command:
        if item.startswith("--"):
            name, _, value = item[2:].partition("=")
            out[name] = value
    return out


def test_services_are_the_tracking_server_and_the_demo(compose: dict[str, Any]) -> None:
    """Two services: ``mlflow`` and ``demo``, and the demo waits for the server to be healthy."""
    services = compose["services"]
    assert set(services) == {"mlflow", "demo"}
    assert services["demo"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "healthcheck" in services["mlflow"]


def test_tracking_server_is_persistent_and_proxies_artifacts(compose: dict[str, Any]) -> None:
    """The backend store and artifacts live on a named volume; the server proxies artifacts."""
    server = compose["services"]["mlflow"]
    options = flags(server["command"])
    volume, _, mount = server["volumes"][0].partition(":")
    assert volume in compose["volumes"]
    assert options["backend-store-uri"].startswith(f"sqlite:///{mount}/")
    assert options["artifacts-destination"].startswith(mount)
    assert "serve-artifacts" in options
    assert options["default-artifact-root"] == "mlflow-artifacts:/"


def test_demo_reaches_the_server_where_it_listens(compose: dict[str, Any]) -> None:
    """The demo's MLFLOW_TRACKING_URI names the mlflow service, its port and an allowed host."""
    server = compose["services"]["mlflow"]
    options = flags(server["command"])
    env = compose["services"]["demo"]["environment"]
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert uri.scheme == "http"
    assert uri.hostname == "mlflow"
    assert str(uri.port) == options["port"]
    assert f"{uri.hostname}:{uri.port}" in options["allowed-hosts"].split(",")
    published = [p.split(":") for p in server["ports"]]
    assert [options["port"], options["port"]] in published


def test_demo_reports_to_mlflow_with_that_environment(compose: dict[str, Any]) -> None:
    """With the service's environment, ``report_to="all"`` (the demo's) includes MLflow."""
    env = {str(k): str(v) for k, v in compose["services"]["demo"]["environment"].items()}
    assert "mlflow" in resolve_report_to("all", env)
    assert 'report_to = "all"' in (ROOT / "examples" / "digits.toml").read_text()


def test_demo_command_is_a_valid_trainbus_invocation(compose: dict[str, Any]) -> None:
    """The demo image's entry point is ``trainbus`` and its command parses as ``trainbus demo``."""
    demo = compose["services"]["demo"]
    dockerfile = demo["build"]["dockerfile_inline"]
    assert 'ENTRYPOINT [".venv/bin/trainbus"]' in dockerfile
    assert build_parser().parse_args(demo["command"]).command == "demo"
    for package in ("trainbus", "bus", "trainer", "sinks", "orchestrator", "examples"):
        assert f"COPY {package} {package}" in dockerfile
