"""The trainbus contenders of ``bench_peers``: its ``Trainer`` bare and with the card sinks.

They train exactly what the other contenders train (``benchmarks._contenders``): same model,
batches, optimiser, schedule, clipping, log cadence and extra scalars, stopped by the same clock.
The sinks are chosen the way a user chooses them, with ``report_to`` and the integrations'
environment variables; Comet runs offline (``COMET_START_ONLINE=0``), writing its file locally.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import bench_args, extra_scalars
from benchmarks._contenders import (
    EXPERIMENT,
    BatchList,
    Classifier,
    Measured,
    RunSpec,
    StepClock,
    _prepare,
    _with_env,
    contender,
    unwrap,
)

__all__ = ["run_trainbus", "scalar_trainer"]


def run_trainbus(spec: RunSpec, report_to: list[str], env: dict[str, str]) -> Measured:
    """Train the workload with ``trainer.Trainer`` reporting to ``report_to``."""
    return _with_env(env, lambda: _train(spec, report_to))


def _train(spec: RunSpec, report_to: list[str]) -> Measured:
    from trainbus.trainer import PrinterCallback, TrainerCallback

    _prepare(spec)
    began = time.perf_counter()
    clock = StepClock(spec)
    scalars = spec.scalars
    work = spec.work

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if clock.tick(state.global_step):
                control.should_training_stop = True

    args = bench_args(
        work,
        spec.workdir / "trainbus",
        logging_steps=spec.every,
        report_to=report_to or "none",
        run_name="bench-peers-trainbus",
    )
    trainer = scalar_trainer(scalars)(
        model=Classifier(work),
        args=args,
        train_dataset=BatchList(work),
        data_collator=unwrap,
        callbacks=[ClockCallback()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.measured(began, time.perf_counter())


def scalar_trainer(scalars: int) -> Any:
    """A ``trainer.Trainer`` subclass that adds ``scalars`` extra scalars to every training log
    entry, before it is published or seen (where a user would add their own)."""
    from trainbus.trainer import Trainer

    class ScalarTrainer(Trainer):
        def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(extra_scalars(float(logs["loss"]), scalars))
            super().log(logs, start_time)

    return ScalarTrainer


def _mlflow(spec: RunSpec) -> dict[str, str]:
    if spec.tracking_uri is None:
        raise ValueError("tracking_uri must be set for a contender that logs to MLflow")
    return {"MLFLOW_TRACKING_URI": spec.tracking_uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}


def _tensorboard(spec: RunSpec) -> dict[str, str]:
    return {"TENSORBOARD_LOGGING_DIR": str(spec.workdir / "tensorboard")}


_COMET_OFFLINE = {"COMET_START_ONLINE": "0", "COMET_PROJECT_NAME": EXPERIMENT}


@contender("trainbus", "trainbus Trainer, no sinks", "trainbus", uses_mlflow=False)
def run_trainbus_bare(spec: RunSpec) -> Measured:
    """trainbus with ``report_to="none"``: the bus and journal, no sink."""
    return run_trainbus(spec, [], {})


@contender("trainbus+tb", "trainbus + TensorBoard sink", "trainbus", uses_mlflow=False)
def run_trainbus_tensorboard(spec: RunSpec) -> Measured:
    """trainbus writing TensorBoard event files."""
    return run_trainbus(spec, ["tensorboard"], _tensorboard(spec))


@contender("trainbus+mlflow", "trainbus + MLflow sink", "trainbus", uses_mlflow=True)
def run_trainbus_mlflow(spec: RunSpec) -> Measured:
    """trainbus logging to the MLflow server over REST."""
    return run_trainbus(spec, ["mlflow"], _mlflow(spec))


@contender(
    "trainbus+3",
    "trainbus + TensorBoard + MLflow + Comet (offline)",
    "trainbus",
    uses_mlflow=True,
)
def run_trainbus_all(spec: RunSpec) -> Measured:
    """trainbus with all three card sinks at once."""
    env = {**_mlflow(spec), **_tensorboard(spec), **_COMET_OFFLINE}
    return run_trainbus(spec, ["tensorboard", "mlflow", "comet_ml"], env)


@contender(
    "trainbus+3 proc",
    "trainbus + the same three sinks in a child process (TRAINBUS_SINK_PROCESS=1)",
    "trainbus",
    uses_mlflow=True,
)
def run_trainbus_all_in_process_of_their_own(spec: RunSpec) -> Measured:
    """trainbus with all three card sinks, run by a sink process that follows the journal."""
    env = {**_mlflow(spec), **_tensorboard(spec), **_COMET_OFFLINE, "TRAINBUS_SINK_PROCESS": "1"}
    return run_trainbus(spec, ["tensorboard", "mlflow", "comet_ml"], env)
