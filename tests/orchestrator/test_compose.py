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


def test_images_are_the_tested_server_and_a_build_of_this_checkout(
    compose: dict[str, Any],
) -> None:
    """The tracking server's image is MLflow's own, by default at the version the test suite's
    server runs (``scripts/constraints-test.txt``); the demo is built here by ``setup.sh demo``."""
    image = compose["services"]["mlflow"]["image"]
    repository, _, tag = image.partition(":")
    assert repository == "ghcr.io/mlflow/mlflow"
    pinned = [
        line.split("==")[1].strip()
        for line in (ROOT / "scripts" / "constraints-test.txt").read_text().splitlines()
        if line.startswith("mlflow==")
    ]
    assert tag == f"${{MLFLOW_VERSION:-v{pinned[0]}}}"
    demo = compose["services"]["demo"]
    assert "image" not in demo and demo["build"]["context"] == "."
    assert "RUN bash scripts/setup.sh demo" in demo["build"]["dockerfile_inline"]
    assert "demo)" in (ROOT / "scripts" / "setup.sh").read_text()


def test_health_check_asks_the_server_where_it_listens(compose: dict[str, Any]) -> None:
    """The health check requests MLflow's ``/health`` on the server's own port, with a bounded
    number of retries, so ``depends_on: service_healthy`` cannot wait forever."""
    server = compose["services"]["mlflow"]
    port = flags(server["command"])["port"]
    check = server["healthcheck"]
    assert check["test"][0] == "CMD"
    assert f"http://127.0.0.1:{port}/health" in " ".join(check["test"])
    assert int(check["retries"]) > 0
    assert check["interval"] and check["timeout"]


def test_what_the_demo_writes_is_on_a_named_volume(compose: dict[str, Any]) -> None:
    """The demo's output directory lies on its named volume, so the runs outlive the container
    and the documented ``show`` finds them."""
    demo = compose["services"]["demo"]
    output_dir = demo["command"][demo["command"].index("--output-dir") + 1]
    volume, _, mount = demo["volumes"][0].partition(":")
    assert volume in compose["volumes"]
    assert Path(output_dir).is_relative_to(mount)


def test_the_documented_commands_match_the_services(compose: dict[str, Any]) -> None:
    """README's ``docker compose up --build`` and the file's own usage lines: the ``show`` they
    run reads the demo's output directory, and the UI's port is the one published."""
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up --build" in readme and "(`docker-compose.yml`)" in readme
    header = [
        line.removeprefix("#").strip()
        for line in (ROOT / "docker-compose.yml").read_text().splitlines()
        if line.startswith("#   docker compose")
    ]
    assert header[0].startswith("docker compose up --build")
    run = header[1].split()
    assert run[:5] == ["docker", "compose", "run", "--rm", "demo"]
    shown = build_parser().parse_args(run[5:])
    assert shown.command == "show"
    demo = compose["services"]["demo"]
    assert str(shown.run_dir) == demo["command"][demo["command"].index("--output-dir") + 1]
    ui = urlsplit(header[0].split("UI on ", 1)[1].strip())
    published = [p.split(":") for p in compose["services"]["mlflow"]["ports"]]
    assert [str(ui.port), flags(compose["services"]["mlflow"]["command"])["port"]] in published
