"""The one place where structlog is configured.

Every other module only calls ``structlog.get_logger(__name__)``. Configuration happens once per
process, the first time the orchestrator opens a run or the CLI starts, so that a host application
that configured structlog itself keeps its own setup (pass ``force=True`` to override it).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["apply_level", "configure_logging", "is_configured"]

_configured = False
_threshold: _DropBelow | None = None
"""The level filter of the configuration trainbus made (``None`` until it made one)."""


class _DropBelow:
    """Drop events below a level (a processor, so ``capture_logs`` bypasses it)."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(
        self, logger: object, method_name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        if _LEVELS.get(method_name, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _current_stderr(*args: object) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is now (test runners and daemons replace it)."""
    return structlog.PrintLogger(sys.stderr)


def is_configured() -> bool:
    """Whether trainbus (or the host application) has configured structlog already."""
    return _configured or structlog.is_configured()


def configure_logging(
    *,
    level: int | str = logging.INFO,
    json: bool | None = None,
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """Configure structlog: a console renderer on a terminal, one JSON object a line otherwise.

    Idempotent: later calls do nothing unless ``force`` is set, so libraries embedding trainbus and
    the CLI can both call it without fighting over the configuration.
    """
    global _configured
    if is_configured() and not force:
        return
    out = stream if stream is not None else sys.stderr
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"log level must be a logging level name such as 'INFO', got {level!r}")
    use_json = not out.isatty() if json is None else json
    global _threshold
    _threshold = _DropBelow(numeric)
    processors: list[structlog.typing.Processor] = [
        _threshold,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        # JSON needs the traceback as a string; the console renderer formats it itself.
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        # The level is a processor, not a filtering wrapper class: capture_logs() swaps the
        # processors out, so tests see every level whatever was configured before them.
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        logger_factory=(
            structlog.PrintLoggerFactory(file=stream) if stream is not None else _current_stderr
        ),
        # Not cached: tests swap the configuration with structlog.testing.capture_logs().
        cache_logger_on_first_use=False,
    )
    _configured = True


def apply_level(level: int) -> None:
    """Show trainbus's own events from ``level`` up (a ``logging`` level), as a trainer's
    ``log_level`` asks; transformers sets its library's verbosity the same way.

    Only a configuration trainbus made is changed: a host application that configured structlog
    itself keeps its own levels.
    """
    if _configured and _threshold is not None:
        _threshold.level = level
