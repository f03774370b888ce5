"""``trainbus demo``: the whole pipeline on a real task, on embedded defaults, with no server.

It trains the MLP of ``examples/digits.py`` on scikit-learn's bundled handwritten digits (nothing
to download) from ``examples/digits.toml``: evaluation every epoch, early stopping on accuracy,
checkpoints, a progress bar, TensorBoard files and the journal. Then it prints the accuracy the
best model reaches on the held-out digits and where to look next.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainbus.bus._errors import ConfigurationError
from trainbus.orchestrator.config import load_train_config
from trainbus.orchestrator.rundir import RunDir
from trainbus.orchestrator.show import summarize
from trainbus.orchestrator.task import prepare_run

__all__ = ["QUICK_OVERRIDES", "demo_config_path", "run_demo"]

QUICK_OVERRIDES: dict[str, Any] = {
    "max_steps": 20,
    "eval_strategy": "steps",
    "eval_steps": 10,
    "save_strategy": "steps",
    "save_steps": 10,
    "logging_steps": 5,
}
"""``--quick``: a smoke test of every moving part in a few seconds."""


def _examples_root() -> Path:
    """The directory holding ``examples/``: the working directory, else the source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "examples" / "digits.py").is_file():
            return root
    raise ConfigurationError(
        "the demo needs examples/digits.py and examples/digits.toml from the trainbus source "
        "tree; run it from the repository root"
    )


def demo_config_path() -> Path:
    """Where the demo's run file lives (and puts its root on ``sys.path``)."""
    root = _examples_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        importlib.import_module("sklearn")
    except ImportError as exc:
        raise ConfigurationError(
            "the demo needs scikit-learn (its bundled digits data); run 'bash scripts/setup.sh'"
        ) from exc
    return root / "examples" / "digits.toml"


def run_demo(output_dir: Path, *, quick: bool = False) -> int:
    """Train, evaluate the best model, print the accuracy and where to look; returns 0."""
    config = load_train_config(demo_config_path())
    overrides: dict[str, Any] = {"output_dir": str(output_dir)}
    if quick:
        overrides.update(QUICK_OVERRIDES)
    prepared = prepare_run(config, overrides=overrides)
    trainer = prepared.trainer
    started = time.perf_counter()

    trainer.train()  # the trainer's launcher is the prepared orchestrator: one run for both
    metrics = dict(trainer.evaluate())
    elapsed = time.perf_counter() - started
    run_dir: RunDir = prepared.orchestrator.run_dir
    summary = summarize(run_dir)
    accuracy = metrics.get("eval_accuracy")
    best = summary.best.get("eval_accuracy", {})
    print()
    print(f"trainbus demo: digits MLP trained in {elapsed:.1f} s, {summary.global_step} steps")
    if isinstance(accuracy, float):
        print(
            f"  eval accuracy of the best model: {accuracy:.4f}  (best at step {best.get('step')})"
        )
    sinks = [entry.name for entry in run_dir.read_record().sinks]
    print(f"  reported to:    {', '.join(sinks) or 'nothing but the journal'}")
    print(f"  run directory:  {run_dir.path}")
    print(f"  checkpoints:    {output_dir}/checkpoint-*/")
    if "tensorboard" in sinks:
        logdir = os.environ.get("TENSORBOARD_LOGGING_DIR") or f"{output_dir}/runs"
        print(f"  TensorBoard:    tensorboard --logdir {logdir}")
    if "mlflow" in sinks:
        print(f"  MLflow:         {os.environ.get('MLFLOW_TRACKING_URI')}")
    print(f"  summary:        trainbus show {output_dir}")
    print(f"  curves:         trainbus plot {output_dir} -o curves.png")
    return 0
