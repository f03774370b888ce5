"""The bus package's public surface: sorted, complete, and free of heavy imports."""

from __future__ import annotations

import subprocess
import sys

from trainbus import bus


def test_all_is_sorted_and_importable() -> None:
    """bus.__all__ is sorted and every name resolves."""
    names = list(bus.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(bus, name) is not None


def test_public_classes_are_exported() -> None:
    """Every public class defined in a bus module is re-exported from the package."""
    import trainbus.bus._bus as m1
    import trainbus.bus._journal as m2
    import trainbus.bus._runtime as m3
    import trainbus.bus._stream as m4

    for module in (m1, m2, m3, m4):
        for name in module.__all__:
            internal = ("Record", "JournalSource", "SinkRunner")
            if isinstance(getattr(module, name), type) and name not in internal:
                assert name in bus.__all__, f"{module.__name__}.{name} is not in bus.__all__"


def test_importing_bus_pulls_in_no_torch_or_http_client() -> None:
    """`import bus` loads neither torch, httpx, numpy nor any vendor SDK."""
    code = (
        "import sys, trainbus.bus, trainbus.bus.testing; "
        "heavy = {'torch', 'httpx', 'numpy', 'mlflow', 'tensorboard', 'comet_ml', 'wandb'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
