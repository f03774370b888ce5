"""The public surface: sorted ``__all__`` everywhere, lazy exports, and imports that stay light.

Every check about what a package exports or what importing it costs lives here, once, for every
package; the per-package test folders test behaviour.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import trainbus
from trainbus import bus, sinks
from trainbus.bus._sink import Sink
from trainbus.orchestrator.registry import INTEGRATIONS

PACKAGES = [
    "trainbus",
    "trainbus.bus",
    "trainbus.trainer",
    "trainbus.sinks",
    "trainbus.orchestrator",
]

PUBLIC_MODULES = [
    "trainbus",
    *sorted(
        info.name
        for info in pkgutil.walk_packages(trainbus.__path__, "trainbus.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ),
]
"""Every module a user may import: the packages and their modules without a leading underscore."""

SDKS = ("mlflow", "comet_ml", "tensorboard", "wandb", "dvclive", "clearml")
SINK_MODULES = [name for name in PUBLIC_MODULES if name.startswith("trainbus.sinks.")]

LIGHT_IMPORTS = {
    "trainbus": ("torch", "httpx", "numpy", *SDKS),
    "trainbus.bus,trainbus.bus.testing": ("torch", "httpx", "numpy", *SDKS),
    "trainbus.sinks": ("torch", "httpx", *SDKS, *SINK_MODULES),
    ",".join(SINK_MODULES): ("torch", *SDKS),
    "trainbus.orchestrator": ("torch", "httpx", "matplotlib", "sklearn", *SDKS),
}
"""Modules imported together in a fresh interpreter -> modules that must not be loaded after."""


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_unique(name: str) -> None:
    """A public module's ``__all__`` lists each name once, sorted, so drift shows in review."""
    module = importlib.import_module(name)
    exported = list(getattr(module, "__all__", []))
    assert exported, f"{name} defines no __all__"
    assert exported == sorted(set(exported)), f"{name}.__all__ is not sorted and unique"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_name_resolves(name: str) -> None:
    """Every name in ``__all__`` is importable from the module (lazy exports included)."""
    module = importlib.import_module(name)
    missing = [key for key in module.__all__ if getattr(module, key, None) is None]
    assert not missing, f"{name} exports names that do not resolve: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_unknown_attribute_raises(package: str) -> None:
    """A misspelt name is an AttributeError, also from packages that export lazily."""
    module = importlib.import_module(package)
    with pytest.raises(AttributeError):
        _ = module.NoSuchName


def test_public_bus_classes_are_exported() -> None:
    """Every public class defined in a bus module is re-exported from ``trainbus.bus``."""
    internal = {"Record", "JournalSource", "SinkRunner"}
    for home in ("_bus", "_journal", "_runtime", "_stream"):
        module = importlib.import_module(f"trainbus.bus.{home}")
        for name in module.__all__:
            if isinstance(getattr(module, name), type) and name not in internal:
                assert name in bus.__all__, f"{module.__name__}.{name} is not in bus.__all__"


@pytest.mark.parametrize(
    ("report_to", "spec"), [(name, spec) for name, spec in INTEGRATIONS.items() if spec]
)
def test_report_to_classes_are_exported_sinks(report_to: str, spec: str) -> None:
    """Each implemented ``report_to`` "module:Class" names a ``Sink`` that ``trainbus.sinks``
    exports, called by its ``report_to`` name (which names its cursor file)."""
    module, _, cls = spec.partition(":")
    sink_cls = getattr(importlib.import_module(module), cls)
    assert issubclass(sink_cls, Sink)
    assert sink_cls.name == report_to
    assert getattr(sinks, cls) is sink_cls


@pytest.mark.parametrize(("imported", "absent"), list(LIGHT_IMPORTS.items()))
def test_imports_stay_light(imported: str, absent: tuple[str, ...]) -> None:
    """Importing a package loads no torch, HTTP stack or vendor SDK it does not need (fresh
    interpreter): the bus never, sinks not until a sink module is used, and no SDK until a sink
    opens."""
    code = (
        "import importlib, sys\n"
        f"for name in {imported!r}.split(','): importlib.import_module(name)\n"
        f"print(','.join(m for m in {absent!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {imported} loaded {out.stdout.strip()}"
