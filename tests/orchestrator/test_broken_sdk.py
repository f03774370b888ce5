"""An SDK that is installed but does not import: an error when named, one warning under "all"."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from trainbus.bus import ConfigurationError
from trainbus.orchestrator import Orchestrator
from trainbus.orchestrator.registry import resolve_report_to

ENV = {"WANDB_MODE": "offline"}
"""Enough for ``"all"`` to pick W&B when its package is found."""


@pytest.fixture
def broken_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``wandb`` package first on ``sys.path`` whose import fails, as a half-done install does."""
    package = tmp_path / "site" / "wandb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'Settings' from 'wandb.sdk' (unknown location)\")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "wandb" or m.startswith("wandb.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.usefixtures("broken_wandb")
def test_a_named_integration_whose_sdk_fails_to_import_is_one_error(tmp_path: Path) -> None:
    """report_to=["wandb"] with a broken wandb fails before anything is written, naming both."""
    with pytest.raises(ConfigurationError) as info:
        resolve_report_to(["wandb"], ENV)
    message = str(info.value)
    assert "report_to integration 'wandb' needs the 'wandb' package" in message
    assert "cannot import name 'Settings'" in message and "\n" not in message

    async def start() -> None:
        async with Orchestrator(output_dir=tmp_path / "out", report_to=["wandb"], env=ENV):
            pass

    with pytest.raises(ConfigurationError, match="does not import"):
        anyio.run(start)
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("broken_wandb")
def test_all_skips_a_broken_sdk_with_one_warning() -> None:
    """Under "all" the broken integration is left out with a single warning naming it."""
    with capture_logs() as logs:
        names = resolve_report_to("all", ENV)
    assert "wandb" not in names and "tensorboard" in names
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "integration_skipped" and warnings[0]["integration"] == "wandb"
    assert "does not import" in warnings[0]["reason"]
