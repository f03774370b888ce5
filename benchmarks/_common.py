"""What every benchmark shares: the machine card, timing statistics, result files, the workload.

Each ``bench_<topic>.py`` runs alone (``python -m benchmarks.bench_<topic> [--quick]``) and writes
``benchmarks/results/<topic>.json`` through :func:`write_result`, so the suite runner
(``python -m benchmarks``) can assemble the numbers without importing the benchmark modules.

A result file looks like::

    {"topic": "peers", "date": "...", "command": "...", "quick": false,
     "machine": {...}, "versions": {...},
     "headline": [{"name": ..., "value": ..., "unit": ..., "target": ..., "met": ...}, ...],
     "tables": {"<table name>": [{column: value, ...}, ...]},
     ...anything else the benchmark wants to keep}

``headline`` holds the figures the README reports against a target; ``tables`` hold the detail.

What every benchmark's set-up shares lives here once: :func:`bench_parser` (the ``--quick``
option every benchmark takes), :func:`bench_mode` (``full``, ``quick`` or the suite's ``smoke``)
and :func:`bench_args` (the training arguments that train the workload the same way in trainbus
and in transformers).

The workload (:class:`Workload`) is the one model, data set and optimiser setting that every
contender in ``bench_peers`` trains, so that "steps per second" means the same work for all of
them. It is deliberately small enough for a shared two-core machine, and large enough (a few
milliseconds per step) that per-step framework overhead is visible but does not dominate.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

__all__ = [
    "BENCH_DIR",
    "RESULTS_DIR",
    "SKIPPED_EXIT",
    "Headline",
    "Workload",
    "abab_order",
    "bench_args",
    "bench_mode",
    "bench_parser",
    "extra_scalars",
    "format_table",
    "machine_card",
    "make_batches",
    "make_model",
    "median",
    "percentile",
    "read_result",
    "versions",
    "write_result",
]

BENCH_DIR: Final = Path(__file__).resolve().parent
RESULTS_DIR: Final = BENCH_DIR / "results"
PEER_PACKAGES: Final = (
    "trainbus",
    "torch",
    "transformers",
    "mlflow",
    "lightning",
    "tensorboard",
    "comet_ml",
    "anyio",
    "msgspec",
    "httpx",
)

SKIPPED_EXIT: Final = 75
"""Exit status of a benchmark with nothing to measure on this machine (``bench_gpu`` without
CUDA); the suite reports it as skipped, not failed, and keeps its last result file."""

T = TypeVar("T")


# --- the machine and the software ------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    """The checkout's commit, or ``TRAINBUS_BENCH_COMMIT`` when set: a copy of the working tree
    on another machine may carry the history of another commit than the code it holds."""
    if named := os.environ.get("TRAINBUS_BENCH_COMMIT"):
        return named
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "not measured (torch missing)"
    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return "none"


def machine_card() -> dict[str, Any]:
    """The facts a reader needs to judge the numbers: CPU, cores, memory, OS, Python, GPU."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": _gpu(),
        "commit": _git_commit(),
    }


def versions(packages: Iterable[str] = PEER_PACKAGES) -> dict[str, str | None]:
    """Installed versions of trainbus and its peers; ``None`` where a package is missing."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def command_line() -> str:
    """The command that produced this result, as a reader would type it from the repository."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        module = Path(argv[0]).resolve()
        root = BENCH_DIR.parent
        if root in module.parents:
            dotted = ".".join(module.relative_to(root).with_suffix("").parts)
            argv = ["-m", dotted.removesuffix(".__main__"), *argv[1:]]
    return shlex.join(["python", *argv])


# --- statistics --------------------------------------------------------------------------------


def wait_for_sink_processes(timeout: float = 30.0) -> None:
    """Wait until no sink process of an earlier run is left among this process's children.

    A run returns once its sink process has reported, and the child's interpreter then exits in
    the background (``orchestrator/sink_host.py``); a benchmark that starts its next run at once
    would time that exit against the next contender, and count its CPU in that run.
    ``timeout`` only guards against a hang.
    """
    import time

    import psutil

    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        alive = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "trainbus.orchestrator._sink_child" in " ".join(child.cmdline()):
                    alive.append(child)
            except psutil.Error:
                continue
        if not alive:
            return
        psutil.wait_procs(alive, timeout=0.1)


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values (a missing figure must never look like a zero)."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def abab_order(names: Sequence[T], repeats: int) -> list[T]:
    """Interleaved run order: every contender once per round, the round reversed every other time.

    On a shared machine the background load drifts; running A B C, C B A, A B C, ... gives every
    contender the same exposure to that drift, and the medians over rounds are compared.
    """
    order: list[T] = []
    for round_index in range(repeats):
        order.extend(names if round_index % 2 == 0 else list(reversed(names)))
    return order


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """One figure the README reports, with its target and whether this run met it."""

    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


def write_result(
    topic: str,
    *,
    quick: bool,
    headline: Sequence[Headline] = (),
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    extra: Mapping[str, Any] | None = None,
    results_dir: Path | None = None,
) -> Path:
    """Write ``results/<topic>.json`` with the machine card, versions, date and command."""
    directory = results_dir or Path(os.environ.get("TRAINBUS_BENCH_RESULTS", RESULTS_DIR))
    directory.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "topic": topic,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "quick": quick,
        "machine": machine_card(),
        "versions": versions(),
        "headline": [asdict(item) for item in headline],
        "tables": {name: [dict(row) for row in rows] for name, rows in (tables or {}).items()},
    }
    payload.update(extra or {})
    path = directory / f"{topic}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=True) + "\n")
    return path


def read_result(path: Path) -> dict[str, Any]:
    """Load one result file; the runner tolerates files written by older or hand-rolled benches."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a result file must hold a JSON object, not {type(data)}")
    return data


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return value.name
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} into a result file")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01 or value == 0:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    markdown: bool = False,
) -> str:
    """Rows of dicts as an aligned text table (or a Markdown table)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(row.get(col)) for col in cols] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        return "\n".join(lines)
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(cols)]
    out = ["  ".join(col.ljust(w) for col, w in zip(cols, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(out)


# --- the shared workload ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The one training job every contender runs: same model, data, optimiser and clipping."""

    in_features: int = 128
    hidden: int = 512
    classes: int = 10
    batch_size: int = 64
    batches: int = 32
    learning_rate: float = 1e-3
    max_grad_norm: float = 1.0
    fused_adamw: bool = True
    """AdamW's fused kernel (Hugging Face v5's and trainbus's default) for every contender."""
    max_steps: int = 1_000_000
    seed: int = 1234
    threads: int = 1

    @property
    def optim(self) -> str:
        """This AdamW's ``optim`` name in Hugging Face's and trainbus's arguments."""
        return "adamw_torch_fused" if self.fused_adamw else "adamw_torch"

    def describe(self) -> str:
        """One line for RESULTS.md."""
        return (
            f"MLP {self.in_features}-{self.hidden}-{self.hidden}-{self.classes} (ReLU), "
            f"batch {self.batch_size}, {self.batches} fixed synthetic batches cycled, "
            f"{'fused ' if self.fused_adamw else ''}AdamW "
            f"lr {self.learning_rate} with linear decay, grad-norm clip {self.max_grad_norm}, "
            f"torch threads {self.threads}"
        )


def make_model(work: Workload) -> Any:
    """The MLP, initialised from ``work.seed`` so every contender starts from the same weights."""
    import torch
    from torch import nn

    torch.manual_seed(work.seed)
    return nn.Sequential(
        nn.Linear(work.in_features, work.hidden),
        nn.ReLU(),
        nn.Linear(work.hidden, work.hidden),
        nn.ReLU(),
        nn.Linear(work.hidden, work.classes),
    )


def make_batches(work: Workload) -> list[dict[str, Any]]:
    """Pre-built batches (``{"x", "labels"}``) so data loading costs the same for everyone."""
    import torch

    generator = torch.Generator().manual_seed(work.seed + 1)
    return [
        {
            "x": torch.randn(work.batch_size, work.in_features, generator=generator),
            "labels": torch.randint(0, work.classes, (work.batch_size,), generator=generator),
        }
        for _ in range(work.batches)
    ]


def extra_scalars(loss: float, count: int) -> dict[str, float]:
    """The extra scalars every contender logs beside its loss: cheap, deterministic, distinct."""
    return {f"extra/s{index:03d}": loss * (1.0 + index * 1e-3) for index in range(count)}


# --- what every benchmark's command line and training set-up share ---------------------------

Mode = Literal["full", "quick", "smoke"]
"""How long a benchmark runs: its full measurement, its quick mode, or the suite's smoke run."""


def bench_parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first paragraph as the description, and the
    ``--quick`` option every benchmark takes (a benchmark adds its own options after)."""
    description = (doc or "").split("\n\n")[0].strip()
    parser = argparse.ArgumentParser(description=description or None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def bench_mode(quick: bool, smoke: bool = False) -> Mode:
    """``smoke`` when asked for (``smoke``, or ``TRAINBUS_BENCH_SMOKE=1`` from the suite's smoke
    run), else ``quick`` or ``full``."""
    if smoke or os.environ.get("TRAINBUS_BENCH_SMOKE") == "1":
        return "smoke"
    return "quick" if quick else "full"


def bench_args(
    work: Workload,
    output_dir: Path,
    *,
    max_steps: int | None = None,
    logging_steps: int = 1,
    report_to: str | Sequence[str] = "none",
    library: Literal["trainbus", "transformers"] = "trainbus",
    **overrides: Any,
) -> Any:
    """Training arguments that train ``work`` the same way in every contender.

    Args:
        work: the workload; its learning rate, clipping, optimiser and seed are used.
        output_dir: where the trainer writes (checkpoints are off; trainbus puts its run here).
        max_steps: optimizer steps; ``work.max_steps`` (a time budget ends the run) by default.
        logging_steps: log every this many steps.
        report_to: the integrations to report to; ``"none"`` for no sink.
        library: ``"trainbus"`` for :class:`trainbus.trainer.TrainingArguments`,
            ``"transformers"`` for Hugging Face's (with pinned memory off, as on a CPU).
        overrides: any other argument (``run_name``, ``disable_tqdm``, ``use_cpu``, ...).

    The batches are pre-built (``per_device_train_batch_size=1`` hands one whole batch per step),
    nothing is saved or evaluated, and no progress bar is drawn unless asked for.
    """
    fields: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": max_steps or work.max_steps,
        "per_device_train_batch_size": 1,
        "learning_rate": work.learning_rate,
        "weight_decay": 0.0,
        "max_grad_norm": work.max_grad_norm,
        "optim": work.optim,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "logging_strategy": "steps",
        "logging_steps": logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": report_to,
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": work.seed,
    }
    if library == "transformers":
        import transformers

        fields["dataloader_pin_memory"] = False
        return transformers.TrainingArguments(**{**fields, **overrides})
    from trainbus.trainer import TrainingArguments

    return TrainingArguments(**{**fields, **overrides})
