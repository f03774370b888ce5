"""``trainbus``: train from a TOML file, sync, show and plot run directories, run the demo,
upload an offline Comet run.

Bad input (a malformed file, an unknown ``report_to`` name, a factory that does not import, an
unwritable ``output_dir``, a path that is not a run directory) ends with exit code 2 and one line
on stderr, before anything is written. ``trainbus train`` stopped by SIGTERM or SIGINT saves,
flushes, marks the run ``killed`` and exits with 143 or 130; a second signal ends it at once.

``sync``, ``show`` and ``plot`` read a run directory as data: they import no code it names (``sync``
rebuilds registered integrations by name, and user sink classes only with ``--sink-class`` or
``--allow-run-classes``) and put nothing on ``sys.path`` unless ``--app-dir`` says so. Given an
``output_dir``, they read world rank zero's run of the latest job and name its other ranks'
directories, with their status, in one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import anyio

from trainbus.bus._errors import ConfigurationError, TrainbusError
from trainbus.bus._numbers import check_seconds
from trainbus.orchestrator.logging import configure_logging

if TYPE_CHECKING:
    from trainbus.orchestrator.rundir import RunDir

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _seconds(text: str) -> float:
    """An argparse type for timeouts: NaN and negative numbers are a usage error, not a hang."""
    try:
        return check_seconds("the value", float(text))
    except ValueError as exc:  # float("x") and ConfigurationError alike: one usage line
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0 (inf for no limit), got {text!r}"
        ) from exc


def _add_app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on sys.path so 'module:function' factories import (default: .)",
    )


def _add_run_classes(sync: argparse.ArgumentParser) -> None:
    """Reading a run directory never imports code it names, unless the user names it here."""
    sync.add_argument(
        "--sink-class",
        action="append",
        dest="sink_classes",
        metavar="MODULE:CLASS",
        help="also deliver the user sink that run.json names as MODULE:CLASS (repeatable); "
        "without it such sinks are skipped, as reading a run directory never imports its code",
    )
    sync.add_argument(
        "--allow-run-classes",
        action="store_true",
        help="import every user sink class run.json names (only for run directories you trust)",
    )
    sync.add_argument(
        "--app-dir",
        default=None,
        help="directory put first on sys.path to import those classes (default: none; the "
        "working directory is not searched)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``trainbus`` argument parser (exposed for the docs and the tests)."""
    parser = _Parser(
        prog="trainbus",
        description="PyTorch training on an async event bus: non-blocking sinks, no lost metrics.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="structlog level: DEBUG, INFO, WARNING, ERROR (default: INFO; WARNING for the demo)",
    )
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train from a TOML run file")
    train.add_argument("config", type=Path, help="the run file (see examples/digits.toml)")
    train.add_argument("--output-dir", help="override args.output_dir")
    train.add_argument("--run-name", help="override args.run_name")
    train.add_argument(
        "--report-to", help="override args.report_to: 'all', 'none' or names separated by commas"
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check the run file and print which integrations report_to picks (and why not the "
        "others); train nothing, write nothing",
    )
    train.add_argument(
        "--flush-timeout",
        type=_seconds,
        default=30.0,
        help="seconds the sinks get to deliver at the end; the rest waits for sync (default: 30)",
    )
    _add_app_dir(train)

    sync = sub.add_parser("sync", help="deliver what the journal holds beyond each sink's cursor")
    sync.add_argument("run_dir", type=Path, help="a run directory, or an output_dir (newest run)")
    sync.add_argument("--sink", action="append", dest="sinks", help="only this sink (repeatable)")
    sync.add_argument(
        "--timeout", type=_seconds, default=None, help="give up after this many seconds"
    )
    sync.add_argument(
        "--force", action="store_true", help="sync even if run.json says its process is alive"
    )
    _add_run_classes(sync)

    show = sub.add_parser("show", help="steps, last and best metrics, per-sink delivery state")
    show.add_argument("run_dir", type=Path, help="a run directory, or an output_dir (newest run)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")

    plot = sub.add_parser("plot", help="draw loss and evaluation curves from the journal")
    plot.add_argument("run_dir", type=Path, help="a run directory, or an output_dir (newest run)")
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG to write")

    demo = sub.add_parser("demo", help="train a small MLP on scikit-learn's digits (no server)")
    demo.add_argument("--output-dir", default="trainbus-demo", help="where the run goes")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    comet = sub.add_parser("comet-upload", help="upload a Comet run recorded offline (COMET_*)")
    _add_comet_upload(comet)
    return parser


def _add_comet_upload(comet: argparse.ArgumentParser) -> None:
    comet.description = (
        "Upload the offline archives of a run that the Comet sink recorded with "
        "COMET_START_ONLINE=0, oldest first (train, then each later evaluate or predict), with "
        "the comet_ml SDK's own uploader (as 'comet upload' does): to the server and with the "
        "API key of its configuration (COMET_URL_OVERRIDE, COMET_API_KEY)."
    )
    comet.add_argument(
        "path",
        type=Path,
        help="an archive (.zip), a folder of archives, a run directory or an output_dir",
    )


def _train(ns: argparse.Namespace) -> int:
    from trainbus.orchestrator.config import load_train_config
    from trainbus.orchestrator.task import prepare_run

    config = load_train_config(ns.config)
    report_to = ns.report_to.split(",") if ns.report_to else None
    overrides = {"output_dir": ns.output_dir, "run_name": ns.run_name, "report_to": report_to}
    if ns.dry_run:
        from trainbus.orchestrator.task import dry_run

        print(f"{ns.config}: valid; --dry-run trains nothing")
        for line in dry_run(config, overrides=overrides):
            print(line)
        return 0
    prepared = prepare_run(config, overrides=overrides, flush_timeout=ns.flush_timeout)
    from trainbus.orchestrator.show import format_summary, summarize

    orch = prepared.orchestrator
    trainer = prepared.trainer
    trainer.train()  # its launcher is the prepared orchestrator (prepare_run)
    print(format_summary(summarize(orch.run_dir), orch.run_dir))
    if trainer.stopped_by_signal is not None:  # stopped and saved; the shell's convention
        from trainbus.trainer._signals import exit_code

        return exit_code(trainer.stopped_by_signal)
    return 0


def _find_run(path: Path) -> RunDir:
    """The run ``sync``, ``show`` and ``plot`` read in ``path`` (world rank zero's of the latest
    job); the job's other ranks are named on stderr, so ``--json`` output stays one document."""
    from trainbus.orchestrator.rundir import find_job

    job = find_job(path)
    line = job.describe_others()
    if line is not None:
        print(line, file=sys.stderr)
    return job.chosen


def _sync(ns: argparse.Namespace) -> int:
    from trainbus.orchestrator.sync import plan_sinks, sync_run

    deadline = ns.timeout if ns.timeout is not None else float("inf")
    allow = True if ns.allow_run_classes else (ns.sink_classes or [])
    run_dir = _find_run(ns.run_dir)
    plan = plan_sinks(run_dir, only=ns.sinks, allow_classes=allow)

    async def go() -> int:
        reports = await sync_run(run_dir.path, sinks=plan.sinks, deadline=deadline, force=ns.force)
        for line in plan.skipped:
            print(line)
        left = len(plan.skipped)
        for report in reports.values():
            print(
                f"{report.name}: delivered {report.delivered}, skipped {report.skipped}, "
                f"quarantined {report.quarantined}, undelivered {report.undelivered}"
                + (f" (disabled: {report.last_error})" if report.disabled else "")
            )
            left += report.undelivered
        return 0 if left == 0 else 1

    return anyio.run(go)


def _show(ns: argparse.Namespace) -> int:
    import msgspec

    from trainbus.orchestrator.show import format_summary, summarize

    run_dir = _find_run(ns.run_dir)
    summary = summarize(run_dir)
    if ns.json:
        print(msgspec.json.format(msgspec.json.encode(summary), indent=2).decode())
    else:
        print(format_summary(summary, run_dir))
    return 0


def _plot(ns: argparse.Namespace) -> int:
    from trainbus.orchestrator.plot import plot_run

    path = plot_run(_find_run(ns.run_dir), ns.output)
    print(f"wrote {path}")
    return 0


def _demo(ns: argparse.Namespace) -> int:
    from trainbus.orchestrator.demo import run_demo

    return run_demo(Path(ns.output_dir), quick=ns.quick)


def _comet_upload(ns: argparse.Namespace) -> int:
    from trainbus.orchestrator.rundir import find_run_dir
    from trainbus.sinks.comet import find_archives, upload_offline

    path: Path = ns.path
    archives = find_archives(path)
    if not archives and path.is_dir():
        with contextlib.suppress(ConfigurationError):  # not a run either: say what was missing
            archives = find_archives(find_run_dir(path).path)
    if not archives:
        raise ConfigurationError(
            f"no Comet offline archive in {str(path)!r}; expected a .zip that a run with "
            "COMET_START_ONLINE=0 wrote (by default into <run_dir>/comet)"
        )
    upload_offline(archives)
    for archive in archives:
        print(f"uploaded {archive}")
    return 0


_COMMANDS = {
    "train": _train,
    "sync": _sync,
    "show": _show,
    "plot": _plot,
    "demo": _demo,
    "comet-upload": _comet_upload,
}


def _error(command: str, exc: BaseException) -> None:
    message = " ".join(str(exc).split())
    print(f"trainbus {command}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainbus`` command; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        level = ns.log_level or ("WARNING" if ns.command == "demo" else "INFO")
        configure_logging(level=level, json=ns.log_json)
    except ValueError as exc:
        parser.error(str(exc))
    app_dir = getattr(ns, "app_dir", None)
    if app_dir is not None:
        sys.path.insert(0, str(Path(app_dir).resolve()))
    try:
        return _COMMANDS[ns.command](ns)
    except ConfigurationError as exc:
        # One line, no traceback: this is the user's input, not a bug.
        _error(ns.command, exc)
        return EXIT_USAGE
    except TrainbusError as exc:
        _error(ns.command, exc)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _error(ns.command, exc)  # a full disk: the file is named, the traceback says no more
        return 1
    except Exception as exc:
        from trainbus.trainer._handler import callback_failure

        failure = callback_failure(exc)  # a user callback raised: name it in one line
        if failure is None:
            raise
        print(f"trainbus {ns.command}: error: {' '.join(failure.split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trainbus {ns.command}: interrupted", file=sys.stderr)
        return 130
