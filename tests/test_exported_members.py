"""Each package's public surface is its sorted ``__all__``, and every listed name resolves."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "trainbus",
    "trainbus.bus",
    "trainbus.trainer",
    "trainbus.sinks",
    "trainbus.orchestrator",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_unique(package: str) -> None:
    """A package's ``__all__`` lists each public name once, sorted, so drift shows in review."""
    module = importlib.import_module(package)
    exported = list(getattr(module, "__all__", []))
    assert exported, f"{package}/__init__.py defines no __all__"
    assert exported == sorted(set(exported)), f"{package}.__all__ is not sorted and unique"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    """Every name in ``__all__`` is importable from the package (lazy exports included)."""
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package} exports names that do not resolve: {missing}"


def test_bus_does_not_import_torch_or_httpx() -> None:
    """Importing the whole bus package pulls in neither torch nor httpx (in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, trainbus.bus, trainbus.bus.testing; "
        "bad = [m for m in ('torch', 'httpx', 'numpy') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"bus pulled in: {out.stdout.strip()}"
