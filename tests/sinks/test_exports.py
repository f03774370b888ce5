"""The sinks package's public surface: sorted exports, lazy loading, no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from trainbus import sinks

MODULES = [
    "trainbus.sinks",
    "trainbus.sinks.tensorboard",
    "trainbus.sinks.mlflow",
    "trainbus.sinks.comet",
    "trainbus.sinks.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_resolvable(name: str) -> None:
    """Each module's __all__ is sorted and every name in it exists."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for attribute in exported:
        assert getattr(module, attribute) is not None


@pytest.mark.parametrize(
    ("spec", "sink_name"),
    [
        ("trainbus.sinks.tensorboard:TensorBoardSink", "tensorboard"),
        ("trainbus.sinks.mlflow:MLflowSink", "mlflow"),
        ("trainbus.sinks.comet:CometSink", "comet_ml"),
    ],
)
def test_report_to_specs_resolve(spec: str, sink_name: str) -> None:
    """The "module:Class" strings the orchestrator uses name the sink classes."""
    module, _, cls = spec.partition(":")
    sink_cls = getattr(importlib.import_module(module), cls)
    assert sink_cls.name == sink_name
    assert getattr(sinks, cls) is sink_cls


def test_importing_sinks_pulls_in_neither_torch_nor_vendor_sdks() -> None:
    """Sinks never import torch, mlflow or comet_ml, and `import sinks` loads no sink module."""
    code = (
        "import sys, trainbus.sinks; assert 'trainbus.sinks.mlflow' not in sys.modules; "
        "import trainbus.sinks.tensorboard, trainbus.sinks.mlflow, trainbus.sinks.comet; "
        "import trainbus.sinks.testing; "
        "bad = [m for m in ('torch', 'mlflow', 'comet_ml', 'tensorboard') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_attribute_raises() -> None:
    """A misspelt name is an AttributeError, not a silent None."""
    with pytest.raises(AttributeError):
        _ = sinks.NoSuchSink
