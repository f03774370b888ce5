"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mlflow_server import MlflowServer, mlflow_available


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on 127.0.0.1 for the whole session (SQLite, proxied artifacts).

    Tests create their own experiments (unique names) so they never see each other's runs.
    """
    if not mlflow_available():
        pytest.skip("mlflow is not installed; the integration tests need a real mlflow server")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
