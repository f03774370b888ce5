"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

import pytest

from tests.support.mlflow_server import MlflowServer, mlflow_available

_LAYER_FOLDERS = frozenset({"bus", "trainer", "sinks", "orchestrator"})


class _OnlyUnderTrainbus(importlib.abc.MetaPathFinder):
    """Refuse ``import bus`` and the like: the layers exist only as ``trainbus.<layer>``.

    pytest puts the repository root on ``sys.path``, where the layer folders are importable by
    their bare names; a stray ``from bus.events import ...`` would load a second copy of a module
    whose classes differ from ``trainbus.bus``'s, and pass here while failing for every user.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname.partition(".")[0] in _LAYER_FOLDERS:
            raise ModuleNotFoundError(f"import trainbus.{fullname}, not {fullname}", name=fullname)
        return None


sys.meta_path.insert(0, _OnlyUnderTrainbus())

# Importing transformers' integrations imports comet_ml, whose import hooks then patch mlflow (and
# torch, TensorBoard ...): every MLflow run would also write a Comet offline archive into the
# working directory. Set before anything imports comet_ml; the Comet sink sets it the same way.
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")


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
