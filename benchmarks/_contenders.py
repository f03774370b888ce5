"""The contenders of ``bench_peers``: one function per way of training the shared workload.

Every contender trains the same model on the same batches with the same optimiser, schedule and
clipping (``_common.Workload``), logs the same dictionary at the same steps (the framework's own
loss entry plus ``extra_scalars``), and is stopped by the same clock: after ``warmup`` the clock
times ``budget`` seconds of training steps. Steps per second over that window is the figure;
setup (before the first step) and teardown (after the last step: flushing, closing runs) are
measured apart, because a sink that hides its cost in the teardown must not look free.

Peer packages (transformers, lightning, mlflow) are imported inside the functions, so the module
imports without them and a missing peer only skips its own rows.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import Workload, bench_args, extra_scalars, make_batches, make_model

T = TypeVar("T")

__all__ = ["CONTENDERS", "Contender", "RunSpec", "Measured", "StepClock"]

EXPERIMENT: Final = "bench-peers"


@dataclass(frozen=True)
class RunSpec:
    """One measurement: the workload, the logging load and where MLflow is."""

    work: Workload
    every: int
    scalars: int
    budget_s: float
    warmup_steps: int
    warmup_s: float
    workdir: Path
    tracking_uri: str | None = None


class StepClock:
    """Times the steps after a warm-up and says when the time budget is spent."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.created = time.perf_counter()
        self.first: float | None = None
        self.start: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def tick(self, step: int) -> bool:
        """Record the end of ``step``; ``True`` once the timed window is over."""
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if self.start is None:
            if step >= self.spec.warmup_steps or now - self.first >= self.spec.warmup_s:
                self.start = (step, now)
            return False
        self.last = (step, now)
        return now - self.start[1] >= self.spec.budget_s

    @property
    def steps(self) -> int:
        """Steps inside the timed window."""
        if self.start is None or self.last is None:
            return 0
        return self.last[0] - self.start[0]

    def measured(self, began: float, ended: float, notes: list[str] | None = None) -> Measured:
        """The figures of a run that started at ``began`` and returned at ``ended``."""
        first = self.first if self.first is not None else ended
        last = self.last[1] if self.last is not None else ended
        return Measured(self.steps_per_s, self.steps, first - began, ended - last, notes or [])

    @property
    def steps_per_s(self) -> float:
        """Training steps per second inside the timed window."""
        if self.start is None or self.last is None or self.steps == 0:
            return math.nan
        return self.steps / (self.last[1] - self.start[1])


@dataclass
class Measured:
    """What one run of one contender produced."""

    steps_per_s: float
    steps: int
    setup_s: float
    teardown_s: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Contender:
    """A named way of training the workload."""

    name: str
    label: str
    family: str
    uses_mlflow: bool
    requires: tuple[str, ...]
    run: Callable[[RunSpec], Measured]

    def missing(self) -> list[str]:
        """Peer packages this contender needs that are not installed."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


# --- the shared model and data ---------------------------------------------------------------


class Classifier(nn.Module):
    """The workload's MLP with a Hugging Face-style ``forward(**batch) -> {"loss", "logits"}``."""

    def __init__(self, work: Workload) -> None:
        super().__init__()
        self.net = make_model(work)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class BatchList(Dataset[dict[str, torch.Tensor]]):
    """Pre-built batches as a data set of length ``batches``; loaders use ``batch_size=1``."""

    def __init__(self, work: Workload) -> None:
        self.batches = make_batches(work)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index]


def unwrap(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The collator every contender uses: a loader item already is a batch."""
    return items[0]


def _linear_decay(work: Workload) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - step / work.max_steps)


def _prepare(spec: RunSpec) -> None:
    torch.set_num_threads(spec.work.threads)
    spec.workdir.mkdir(parents=True, exist_ok=True)


def _log_dict(
    loss: float, grad_norm: float, lr: float, epoch: float, scalars: int
) -> dict[str, float]:
    logs = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr, "epoch": epoch}
    logs.update(extra_scalars(loss, scalars))
    return logs


# --- the floor: a hand-written loop ------------------------------------------------------------


def run_floor(spec: RunSpec) -> Measured:
    """The floor: the same work as the trainers, written out by hand, logging to nowhere."""
    _prepare(spec)
    began = time.perf_counter()
    work = spec.work
    model = Classifier(work)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=work.learning_rate, weight_decay=0.0, fused=work.fused_adamw
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_decay(work))
    data = BatchList(work)
    loader = DataLoader(data, batch_size=1, shuffle=True, collate_fn=unwrap)
    clock = StepClock(spec)
    sink: list[dict[str, float]] = []
    step = 0
    running = torch.zeros(())
    done = False
    epoch = 0
    while not done:
        for batch in loader:
            loss = model(**batch)["loss"]
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), work.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running += loss.detach()
            if step % spec.every == 0:
                value = running.item() / spec.every
                running.zero_()
                epoch_f = epoch + (step % len(data)) / len(data)
                logs = _log_dict(
                    value,
                    grad_norm.item(),
                    float(scheduler.get_last_lr()[0]),
                    epoch_f,
                    spec.scalars,
                )
                sink.append(logs)
                del sink[:-1]
            if clock.tick(step):
                done = True
                break
        epoch += 1
    return clock.measured(began, time.perf_counter())


CONTENDERS: list[Contender] = []


def contender(
    name: str, label: str, family: str, *, uses_mlflow: bool, requires: tuple[str, ...] = ()
) -> Callable[[Callable[[RunSpec], Measured]], Callable[[RunSpec], Measured]]:
    """Register a contender function under ``name``."""

    def register(fn: Callable[[RunSpec], Measured]) -> Callable[[RunSpec], Measured]:
        CONTENDERS.append(Contender(name, label, family, uses_mlflow, requires, fn))
        return fn

    return register


contender("floor", "hand-written loop (floor)", "floor", uses_mlflow=False)(run_floor)


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _iter_forever(loader: DataLoader[Any]) -> Iterator[Any]:
    while True:
        yield from loader


# --- transformers.Trainer ----------------------------------------------------------------------


def _hf_arguments(spec: RunSpec, report_to: str | list[str]) -> Any:
    return bench_args(
        spec.work,
        spec.workdir / "hf",
        logging_steps=spec.every,
        report_to=report_to,
        library="transformers",
        run_name="bench-peers-hf",
    )


def _run_hf(spec: RunSpec, report_to: str | list[str], extra_callbacks: list[Any]) -> Measured:
    _prepare(spec)
    transformers = _module("transformers")
    began = time.perf_counter()
    clock = StepClock(spec)
    scalars = spec.scalars

    callback_base: Any = transformers.TrainerCallback
    trainer_base: Any = transformers.Trainer

    class ClockCallback(callback_base):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if clock.tick(state.global_step):
                control.should_training_stop = True

    class ScalarTrainer(trainer_base):  # type: ignore[misc]
        """Adds the extra scalars to every log entry, before any callback sees it."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(extra_scalars(float(logs["loss"]), scalars))
            super().log(logs, start_time)

    trainer = ScalarTrainer(
        model=Classifier(spec.work),
        args=_hf_arguments(spec, report_to),
        train_dataset=BatchList(spec.work),
        data_collator=unwrap,
        callbacks=[ClockCallback(), *extra_callbacks],
    )
    # With disable_tqdm the Trainer prints every log entry; the floor prints nothing.
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    ended = time.perf_counter()
    return clock.measured(began, ended)


def _with_env(values: dict[str, str], fn: Callable[[], T]) -> T:
    """Call ``fn`` with ``values`` set in the environment, as a user's shell would, then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        return fn()
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _mlflow_env(spec: RunSpec, **more: str) -> dict[str, str]:
    if spec.tracking_uri is None:
        raise ValueError("tracking_uri must be set for a contender that logs to MLflow")
    return {"MLFLOW_TRACKING_URI": spec.tracking_uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, **more}


@contender(
    "hf",
    "transformers.Trainer, report_to none",
    "transformers",
    uses_mlflow=False,
    requires=("transformers", "accelerate"),
)
def run_hf(spec: RunSpec) -> Measured:
    """Hugging Face's Trainer with no integration."""
    return _run_hf(spec, "none", [])


@contender(
    "hf+mlflow-sync",
    "transformers.Trainer + MLflowCallback, synchronous",
    "transformers",
    uses_mlflow=True,
    requires=("transformers", "accelerate", "mlflow"),
)
def run_hf_mlflow_sync(spec: RunSpec) -> Measured:
    """HF's MLflowCallback on its synchronous branch (the one it takes for mlflow < 2.8)."""
    integrations = _module("transformers.integrations")

    base: Any = integrations.MLflowCallback

    class SynchronousMLflowCallback(base):  # type: ignore[misc]
        def setup(self, args: Any, state: Any, model: Any) -> None:
            super().setup(args, state, model)
            self._async_log = False

    env = _mlflow_env(spec, MLFLOW_ENABLE_ASYNC_LOGGING="false")
    return _with_env(env, lambda: _run_hf(spec, "none", [SynchronousMLflowCallback()]))


@contender(
    "hf+mlflow-async",
    "transformers.Trainer + MLflowCallback, MLflow async logging",
    "transformers",
    uses_mlflow=True,
    requires=("transformers", "accelerate", "mlflow"),
)
def run_hf_mlflow_async(spec: RunSpec) -> Measured:
    """HF's MLflowCallback as shipped, with MLFLOW_ENABLE_ASYNC_LOGGING=true."""
    env = _mlflow_env(spec, MLFLOW_ENABLE_ASYNC_LOGGING="true")
    return _with_env(env, lambda: _run_hf(spec, ["mlflow"], []))


# --- PyTorch Lightning -------------------------------------------------------------------------


def _run_lightning(spec: RunSpec, logger_factory: Callable[[], Any] | None) -> Measured:
    _prepare(spec)
    lightning = _module("lightning.pytorch")
    began = time.perf_counter()
    clock = StepClock(spec)
    work = spec.work
    scalars = spec.scalars

    module_base: Any = lightning.LightningModule
    callback_base: Any = lightning.Callback

    class Module(module_base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = Classifier(work)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss: torch.Tensor = self.model(**batch)["loss"]
            # Lightning hands logged values to its logger only on the steps where this property
            # is true (every ``log_every_n_steps``); logging only then keeps the work per step
            # the same as the other contenders'. Without a logger the values are still logged
            # (Lightning keeps them in ``callback_metrics``), as HF's Trainer still builds its
            # log entries with ``report_to="none"``.
            if self.trainer._logger_connector.should_update_logs:
                logs = {"loss": loss.item(), **extra_scalars(loss.item(), scalars)}
                self.log_dict(logs, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(
                self.parameters(), lr=work.learning_rate, weight_decay=0.0, fused=work.fused_adamw
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_decay(work))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    class ClockCallback(callback_base):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            if clock.tick(trainer.global_step):
                trainer.should_stop = True

    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=work.max_steps,
        max_epochs=-1,
        logger=logger_factory() if logger_factory is not None else False,
        log_every_n_steps=spec.every,
        gradient_clip_val=work.max_grad_norm,
        gradient_clip_algorithm="norm",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(spec.workdir / "lightning"),
        callbacks=[ClockCallback()],
    )
    loader = DataLoader(BatchList(work), batch_size=1, shuffle=True, collate_fn=unwrap)
    torch.manual_seed(work.seed)
    trainer.fit(Module(), train_dataloaders=loader)
    ended = time.perf_counter()
    return clock.measured(began, ended)


def _mlflow_logger(spec: RunSpec, *, synchronous: bool) -> Callable[[], Any]:
    if spec.tracking_uri is None:
        raise ValueError("tracking_uri must be set for a contender that logs to MLflow")
    uri = spec.tracking_uri

    def make() -> Any:
        loggers = _module("lightning.pytorch.loggers")
        return loggers.MLFlowLogger(
            experiment_name=EXPERIMENT,
            run_name="bench-peers-lightning",
            tracking_uri=uri,
            synchronous=synchronous,
        )

    return make


@contender(
    "lightning", "Lightning, no logger", "lightning", uses_mlflow=False, requires=("lightning",)
)
def run_lightning(spec: RunSpec) -> Measured:
    """Lightning's loop with logging switched off."""
    return _run_lightning(spec, None)


@contender(
    "lightning+mlflow-sync",
    "Lightning + MLFlowLogger, synchronous",
    "lightning",
    uses_mlflow=True,
    requires=("lightning", "mlflow"),
)
def run_lightning_mlflow_sync(spec: RunSpec) -> Measured:
    """Lightning's MLFlowLogger with synchronous=True."""
    return _run_lightning(spec, _mlflow_logger(spec, synchronous=True))


@contender(
    "lightning+mlflow-async",
    "Lightning + MLFlowLogger, synchronous=False",
    "lightning",
    uses_mlflow=True,
    requires=("lightning", "mlflow"),
)
def run_lightning_mlflow_async(spec: RunSpec) -> Measured:
    """Lightning's MLFlowLogger with synchronous=False (MLflow's async queue)."""
    return _run_lightning(spec, _mlflow_logger(spec, synchronous=False))
