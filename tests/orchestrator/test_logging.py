"""structlog is configured once, by the orchestrator: JSON lines off a terminal, console on one."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing

from trainbus.orchestrator import logging as trainbus_logging


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Put back whatever structlog configuration the test session had."""
    saved: dict[str, Any] = structlog.get_config()
    configured = trainbus_logging._configured
    yield
    structlog.configure(**saved)
    trainbus_logging._configured = configured


@pytest.mark.usefixtures("restore_structlog")
def test_json_lines_when_not_a_terminal() -> None:
    """Off a terminal each event is one JSON object with level and timestamp."""
    out = io.StringIO()
    trainbus_logging.configure_logging(stream=out, force=True)
    structlog.get_logger("t").info("run_started", run_id="r1")
    record = json.loads(out.getvalue())
    assert record["event"] == "run_started"
    assert record["run_id"] == "r1"
    assert record["level"] == "info"
    assert "timestamp" in record


@pytest.mark.usefixtures("restore_structlog")
def test_console_renderer_on_a_terminal() -> None:
    """On a terminal the output is a human-readable line, not JSON."""
    out = FakeTerminal()
    trainbus_logging.configure_logging(stream=out, force=True)
    structlog.get_logger("t").warning("sink_disabled", sink="mlflow")
    line = out.getvalue()
    assert "sink_disabled" in line and "mlflow" in line
    assert not line.lstrip().startswith("{")


@pytest.mark.usefixtures("restore_structlog")
def test_configuration_happens_once_and_levels_filter() -> None:
    """A second call without ``force`` keeps the first configuration; the level filters."""
    first, second = io.StringIO(), io.StringIO()
    trainbus_logging.configure_logging(stream=first, level="WARNING", force=True)
    trainbus_logging.configure_logging(stream=second)
    log = structlog.get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert "shown" in first.getvalue() and "hidden" not in first.getvalue()
    assert second.getvalue() == ""


def test_a_bad_level_names_the_problem() -> None:
    """An unknown level name is a ValueError saying what was expected."""
    with pytest.raises(ValueError, match="logging level name"):
        trainbus_logging.configure_logging(level="LOUD", force=True)


@pytest.mark.usefixtures("restore_structlog")
def test_logs_follow_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit stream, each line goes to the current ``sys.stderr``, not a stale one."""
    trainbus_logging.configure_logging(force=True, json=True)
    replaced = io.StringIO()
    monkeypatch.setattr("sys.stderr", replaced)
    structlog.get_logger("t").info("after_swap")
    assert json.loads(replaced.getvalue())["event"] == "after_swap"


@pytest.mark.usefixtures("restore_structlog")
def test_capture_logs_sees_every_level_whatever_was_configured() -> None:
    """After a WARNING configuration, ``capture_logs`` still captures info and debug events."""
    trainbus_logging.configure_logging(stream=io.StringIO(), level="WARNING", force=True)
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger("t").debug("quiet_detail")
        structlog.get_logger("t").info("state_change")
    assert [entry["event"] for entry in logs] == ["quiet_detail", "state_change"]


@pytest.mark.usefixtures("restore_structlog")
def test_a_trainers_log_level_filters_trainbus_events(tmp_path: Any) -> None:
    """``log_level="error"`` hides the run's info events, as transformers' ``log_level`` sets its
    library's verbosity; ``"passive"`` (the default) leaves the configured level alone."""
    from trainbus.orchestrator._launcher import OrchestratorLauncher
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    def run(level: str) -> str:
        out = io.StringIO()
        trainbus_logging.configure_logging(stream=out, level="INFO", force=True)
        args = TrainingArguments(
            output_dir=str(tmp_path / level),
            max_steps=1,
            log_level=level,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(8))
        trainer.train(launcher=OrchestratorLauncher())
        return out.getvalue()

    assert "run_started" in run("passive")
    assert "run_started" not in run("error")
