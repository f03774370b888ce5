"""Bad numbers and zero-length runs are one line naming the field, exit code 2, nothing written."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.orchestrator.test_cli import ROOT, assert_one_line_error
from trainbus.bus import Bus, ConfigurationError
from trainbus.orchestrator import Orchestrator
from trainbus.orchestrator.cli import main

RUN_FILE = """
model = "trainbus.trainer.testing:TinyRegressor"
train_dataset = "trainbus.trainer.testing:RegressionDataset"

[args]
output_dir = "{output_dir}"
per_device_train_batch_size = 8
report_to = "none"
disable_tqdm = true
{extra}
"""


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """``main(argv)`` in process, as the CompletedProcess ``assert_one_line_error`` reads."""
    try:
        code = main(["--log-level", "WARNING", *argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.parametrize("value", ["nan", "-1", "soon"])
def test_sync_timeout_must_be_seconds(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sync --timeout nan`` (a traceback before) is a usage line with exit code 2."""
    result = _cli(["sync", str(tmp_path), "--timeout", value], capsys)
    assert_one_line_error(result, "--timeout", f"got {value!r}")


def test_sync_timeout_inf_means_no_limit() -> None:
    """``--timeout inf`` stays valid: it is the spelling of "no limit"."""
    from trainbus.orchestrator.cli import build_parser

    assert build_parser().parse_args(["sync", ".", "--timeout", "inf"]).timeout == math.inf


def test_flush_timeout_nan_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``train --flush-timeout nan`` would wait forever at the end: refused as usage."""
    result = _cli(["train", str(tmp_path / "run.toml"), "--flush-timeout", "nan"], capsys)
    assert_one_line_error(result, "--flush-timeout", "'nan'")


@pytest.mark.parametrize("value", [math.nan, -1.0, "30"])
def test_bus_close_deadline_must_be_seconds(value: object) -> None:
    """Bus(close_deadline=nan) is a ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError, match=r"Bus\(close_deadline=\.\.\.\) must be a number"):
        Bus(run_id="r", close_deadline=value)  # type: ignore[arg-type]  # the bad input under test


def test_orchestrator_flush_timeout_must_be_seconds(tmp_path: Path) -> None:
    """Orchestrator(flush_timeout=nan) is refused before any run directory exists."""
    with pytest.raises(ConfigurationError, match=r"^flush_timeout must be a number of seconds"):
        Orchestrator(output_dir=tmp_path / "out", report_to="none", flush_timeout=math.nan)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ("learning_rate = inf", ["learning_rate must be a finite number", "got inf"]),
        ("learning_rate = nan", ["learning_rate must be a finite number", "got nan"]),
        ("num_train_epochs = nan", ["num_train_epochs must be a finite number", "got nan"]),
        ("num_train_epochs = 0", ["num_train_epochs=0 with max_steps=-1 trains for zero steps"]),
        ("max_steps = 0", ["max_steps must be a positive number"]),
    ],
    ids=["lr-inf", "lr-nan", "epochs-nan", "epochs-zero", "max-steps-zero"],
)
def test_bad_numbers_in_a_run_file(
    tmp_path: Path,
    extra: str,
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Non-finite numbers and zero-length runs: exit code 2, one line, no run directory."""
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(RUN_FILE.format(output_dir=out, extra=extra))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT), *sys.path])
    assert_one_line_error(_cli(["train", str(config)], capsys), *needles)
    assert not (out / "trainbus").exists()
