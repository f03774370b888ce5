"""The ``Trainer``: Hugging Face's training loop, with every callback point published on the bus.

Each event point is two lines: publish the event (non-blocking; the events that end an optimizer
step are stamped when they happen and published together, before any callback runs), then run the
control callbacks (the barrier) and keep the control they return. In order::

    train():  RunStarted, InitEnd (fired in __init__, published now), TrainBegin, [eval_on_start]
      for epoch:  EpochBegin
        for window of GA micro-batches:
          StepBegin, (forward, backward, SubstepEnd)*, forward, backward, clip,
          PreOptimizerStep, optimizer.step(), OptimizerStep, scheduler.step(), StepEnd,
          [Log] [PredictionStep*, Log, Evaluate] [Save, Artifact]
        EpochEnd, [Log] [PredictionStep*, Log, Evaluate] [Save, Artifact]
      Log(summary), [load best model], TrainEnd, RunFinished(status)

Features live in their own modules: the training algorithm itself (``trainbus.trainer._loop``,
one ``TrainingLoop`` per ``train()``, which calls back the overridable methods here), data
loading (``trainbus.trainer._data``), run length and resume position (``trainbus.trainer._plan``),
optimizer and schedules (``trainbus.trainer._optim``), files (``trainbus.trainer._checkpoint``),
callback states (``trainbus.trainer._resume``), the prediction loop
(``trainbus.trainer._evaluation``), several ranks (``trainbus.trainer._distributed``). The loss is
summed on the device and read back only when a log entry is written, so steps that do not log
never wait for the device.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from trainbus.bus._bus import Bus, Mark
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import (
    Artifact,
    Evaluate,
    EventBase,
    InitEnd,
    Log,
    Predict,
    PredictionStep,
    RunFinished,
    RunStarted,
    RunStatus,
)
from trainbus.bus._sink import Sink
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._data import (
    DataCollator,
    default_data_collator,
    eval_dataloader,
    train_dataloader,
)
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    extract_loss,
    plain_metrics,
    prediction_loop,
    speed_metrics,
)
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._launcher import Launcher, launch_async, launch_blocking, resolve_launcher
from trainbus.trainer._lock import hold_output_dir
from trainbus.trainer._loop import TrainingLoop
from trainbus.trainer._optim import create_optimizer, create_scheduler
from trainbus.trainer._preflight import check_before_training
from trainbus.trainer._progress import PrinterCallback, ProgressCallback
from trainbus.trainer._rng import set_seed
from trainbus.trainer._run_info import check_arguments, run_config
from trainbus.trainer._signals import stop_on_signals
from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["Trainer"]

_now: Final = time.time

T = TypeVar("T")
Optimizers = tuple[torch.optim.Optimizer | None, LRScheduler | None]


class Trainer:
    """Trains ``model`` on ``train_dataset`` under ``args``, with Hugging Face's public API.

    Beyond Hugging Face's arguments: ``launcher`` opens this trainer's runs instead of the one
    found by entry point (see ``trainbus.trainer._launcher``), and ``sinks`` adds sinks of the
    caller's own to every run.
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset[Any] | None = None,
        eval_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None,
        processing_class: Any = None,
        compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        optimizers: Optimizers = (None, None),
        *,
        launcher: Launcher | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.args = args if args is not None else TrainingArguments()
        check_arguments(self.args, eval_dataset)
        set_seed(self.args.seed)
        self.device: torch.device = self.args.device
        self.model = model.to(self.device)
        self.model_wrapped: nn.Module = self.model
        """What forward/backward run through: ``self.model``, or its DDP wrapper in a group."""
        self._dist = Distributed(self.args.world_size, self.args.process_index, self.device)
        self.data_collator = data_collator or default_data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.processing_class = processing_class
        self.compute_metrics = compute_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.launcher = launcher
        self.sinks = list(sinks)
        """Extra sinks for this trainer's runs (besides ``report_to``), e.g. a user's own."""
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback, *(callbacks or [])],
            self.model,
            processing_class,
            self.optimizer,
            self.lr_scheduler,
        )
        self.add_callback(PrinterCallback if self.args.disable_tqdm else ProgressCallback)
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
        )
        self.control = TrainerControl()
        self._bus: Bus | None = None
        self._staged: list[Mark] = []
        """Per-step events stamped but not yet published (see ``_flush_marks``)."""
        self.callback_handler.before_dispatch = self._flush_marks
        self._init_end_pending = True
        self._stop_requested = False
        self._stop_signal: int | None = None
        """The SIGTERM/SIGINT that stopped (or is stopping) the last ``train()``, if any."""
        self._created_scheduler = False
        """Whether ``lr_scheduler`` is ours (a second ``train()`` then gets a fresh one)."""
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # --- public API -----------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: bool | str | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> TrainOutput:
        """Train in this thread while the run's bus lives on a background event loop.

        ``launcher`` opens this call's run instead of the trainer's own (see
        ``trainbus.trainer._launcher``).

        On the main thread, SIGTERM and SIGINT stop the run gracefully while this call lasts (the
        previous handlers come back after it): the current optimizer step finishes, a checkpoint
        is written if ``save_strategy`` writes checkpoints (``save_only_model`` and
        ``save_total_limit`` apply), the sinks get their flush deadline, and the run closes with
        status ``killed`` (``run.json``, ``RunFinished``, MLflow's ``KILLED``). ``train()`` then
        returns the ``TrainOutput`` of the steps done, as after a callback's stop, and
        ``stopped_by_signal`` names the signal; a script that wants the shell's convention exits
        with ``128 + trainer.stopped_by_signal`` (``trainbus train`` does: 143 or 130). A second
        signal ends the process at once. See ``trainbus.trainer._signals``.
        """
        check_before_training(self.args, resume_from_checkpoint)
        body = functools.partial(self._train, resume_from_checkpoint)
        self._stop_signal = None
        with hold_output_dir(self.args.output_dir), stop_on_signals(self._on_stop_signal):
            return self._run_blocking(body, launcher)

    async def train_async(
        self,
        resume_from_checkpoint: bool | str | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> TrainOutput:
        """Train in a worker thread; the running event loop hosts the bus and the sinks.

        ``launcher`` opens this call's run instead of the trainer's own; ``Orchestrator.train``
        passes itself, so training joins its open run. Signals belong to the host here: nothing
        is installed for them, and the host stops the run with ``request_stop()`` (or by
        cancelling this call, which calls it).
        """
        check_before_training(self.args, resume_from_checkpoint)
        body = functools.partial(self._train, resume_from_checkpoint)
        with hold_output_dir(self.args.output_dir):
            return await launch_async(
                self._launcher(launcher), self, functools.partial(self._work, body)
            )

    def evaluate(
        self,
        eval_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, Any]:
        """Evaluate, log the metrics and fire ``on_evaluate``; a dict of data sets runs each."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigurationError("evaluate() needs an eval_dataset (argument or Trainer(...))")
        return self._run_blocking(functools.partial(self._evaluate, dataset, metric_key_prefix))

    def predict(
        self,
        test_dataset: Dataset[Any],
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Predictions, labels and metrics over ``test_dataset``; fires ``on_predict``, no log."""
        return self._run_blocking(functools.partial(self._predict, test_dataset, metric_key_prefix))

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        """Add ``epoch``, append to ``log_history``, publish ``Log`` and fire ``on_log``."""
        logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._flush_marks()
        bus = self._bus
        if bus is not None:
            state = self.state
            bus.emit(
                Log, global_step=state.global_step, epoch=state.epoch, logs=plain_metrics(logs)
            )
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def save_model(self, output_dir: str | None = None) -> Path:
        """Write the model so that ``from_pretrained(output_dir)`` loads it, as transformers does.

        A model with ``save_pretrained`` writes its config and safetensors weights through it
        (any other module: its ``state_dict`` as ``model.safetensors``); the ``processing_class``
        (else the data collator's tokenizer) is saved beside it, and the arguments as
        ``training_args.json`` (never a pickle: see ``trainbus.trainer._checkpoint``). Only the
        process that saves (``args.should_save``) writes. Inside a run (from a callback, say
        ``on_train_end``) it also publishes ``Artifact(kind="model")`` so sinks can upload it;
        after ``train()`` returned, the run and its bus are closed, and only the files are
        written.

        Args:
            output_dir: where to write; ``args.output_dir`` when ``None``.

        Returns:
            The directory written to.
        """
        target = Path(output_dir or self.args.output_dir)
        if self.args.should_save:
            ckpt.save_model(
                target,
                self.model,
                self.args.to_dict(),
                self.processing_class,
                self.data_collator,
            )
            self._publish(Artifact, kind="model", path=str(target), name=target.name)
        return target

    @property
    def stopped_by_signal(self) -> signal.Signals | None:
        """The signal (SIGTERM or SIGINT) that stopped the last ``train()``, else ``None``."""
        return None if self._stop_signal is None else signal.Signals(self._stop_signal)

    def request_stop(self) -> None:
        """Stop training after the current step, as a callback raising ``should_training_stop``
        would; safe from any thread, and it holds even if asked before training began (when
        ``on_train_begin`` clears that flag). Cancelling ``train_async()`` calls it."""
        self._stop_requested = True
        self.control.should_training_stop = True

    def add_callback(self, callback: Any) -> None:
        """Append a callback (class or instance) after the existing ones."""
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        """Remove and return the first matching callback, or ``None``."""
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        """Remove the first matching callback."""
        self.callback_handler.remove_callback(callback)

    def is_local_process_zero(self) -> bool:
        """Whether this process is the first on its node."""
        return self.args.local_process_index == 0

    def is_world_process_zero(self) -> bool:
        """Whether this process is the first of the whole job."""
        return self.args.process_index == 0

    def get_train_dataloader(self) -> DataLoader[Any]:
        """The training loader (shuffled per epoch with a seed a resume can replay)."""
        if self.train_dataset is None:
            raise ConfigurationError(
                "train() needs a train_dataset; pass Trainer(train_dataset=...)"
            )
        return train_dataloader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            collator=self.data_collator,
            seed=self.args.seed,
            drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            rank=self._dist.rank,
            world_size=self._dist.world_size,
            pin_memory=self.device.type == "cuda",
        )

    def get_eval_dataloader(self, dataset: Dataset[Any]) -> DataLoader[Any]:
        """A sequential loader over ``dataset``."""
        return eval_dataloader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collator=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """AdamW and the configured schedule, unless given through ``optimizers=``."""
        if self.optimizer is None:
            self.optimizer = create_optimizer(
                self.model,
                learning_rate=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                fused=self.args.optim == "adamw_torch_fused",
            )
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(
                self.args.lr_scheduler_type,
                self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
            )
            self._created_scheduler = True

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The loss of one micro-batch under the Hugging Face model contract."""
        return extract_loss(model(**inputs), inputs)

    # --- the run around the work ----------------------------------------------------------------

    def _train(self, resume_from_checkpoint: bool | str | None) -> TrainOutput:
        """What ``train()`` runs inside a run: one ``TrainingLoop`` (``trainbus.trainer._loop``)."""
        return TrainingLoop(self).run(resume_from_checkpoint)

    def _launcher(self, launcher: Launcher | None) -> Launcher:
        """The call's launcher, else the trainer's, else the one installed (or the local one)."""
        if launcher is not None:
            return launcher
        return self.launcher if self.launcher is not None else resolve_launcher()

    def _run_blocking(self, body: Callable[[], T], launcher: Launcher | None = None) -> T:
        if self._bus is not None:  # already inside a run (a callback calling evaluate())
            return body()
        return launch_blocking(self._launcher(launcher), self, functools.partial(self._work, body))

    def _work(self, body: Callable[[], T], bus: Bus) -> T:
        """Bracket ``body`` with ``RunStarted`` and ``RunFinished`` on the launcher's bus."""
        self._bus = self.callback_handler.bus = bus
        # Events stamped but never published (the last run's bus refused them) are not this
        # run's; and the handler may have been replaced since __init__.
        self._staged = []
        self.callback_handler.before_dispatch = self._flush_marks
        try:
            bus.emit(RunStarted, **run_config(self.args, self.model))
            if self._init_end_pending:
                self._init_end_pending = False
                bus.emit(InitEnd)
            try:
                result = body()
            except KeyboardInterrupt:
                self._publish(RunFinished, status="killed")
                raise
            except BaseException as exc:
                self._publish(RunFinished, status="failed", error=f"{type(exc).__name__}: {exc}")
                raise
            done = self.state.global_step >= self.state.max_steps or not isinstance(
                result, TrainOutput
            )
            status: RunStatus = "completed" if done else "stopped"
            if self._stop_signal is not None and isinstance(result, TrainOutput):
                status = "killed"
            self._publish(RunFinished, status=status)
            return result
        finally:
            self._bus = self.callback_handler.bus = None

    def _on_stop_signal(self, signum: int) -> None:
        """Record a stop signal; the loop turns it into agreed flags at the next safe point.

        Runs in the signal handler: the control flags are not touched here, since under
        ``torchrun`` a flag raised after the ranks merged theirs would be one rank's alone.
        """
        self._stop_signal = signum

    def _mark(self, event_type: type[EventBase]) -> None:
        """Stamp a per-step event (no fields of its own) now; ``_flush_marks`` publishes it."""
        state = self.state
        self._staged.append((event_type, _now(), state.global_step, state.epoch))

    def _flush_marks(self) -> None:
        """Publish the stamped per-step events, in order, with their own times.

        ``StepBegin`` and ``SubstepEnd`` are published at once (a run that hangs in a forward
        pass shows where); ``PreOptimizerStep``, ``OptimizerStep`` and ``StepEnd``, which come
        microseconds apart, together at the end of the step. Flushed also before any callback
        runs (the handler's ``before_dispatch``) and before any other event is published, so a
        callback (or an ``async def`` hook draining the bus) sees them and ``seq`` order stays
        the order things happened on the training thread. Two calls per step instead of four
        save the training thread much of what the events cost (a lock, a wake-up check, a call
        chain each). Training-thread only, like the loop that stamps them.
        """
        staged = self._staged
        if staged:
            self._staged = []  # taken first: an interrupt below cannot publish them twice
            bus = self._bus
            if bus is not None:
                bus.publish_marks(staged)

    def _publish(self, event_type: type[EventBase], **fields: Any) -> None:
        self._flush_marks()
        if self._bus is not None:
            self._bus.emit(
                event_type, global_step=self.state.global_step, epoch=self.state.epoch, **fields
            )

    # --- evaluation and prediction --------------------------------------------------------------

    def _evaluate(
        self, dataset: Dataset[Any] | Mapping[str, Dataset[Any]], prefix: str
    ) -> dict[str, Any]:
        """One ``Log`` and one ``Evaluate`` per data set (``eval_<name>_`` for a dict of them)."""
        if isinstance(dataset, Mapping):
            results: dict[str, Any] = {}
            for name, part in dataset.items():
                results.update(self._evaluate(part, f"{prefix}_{name}"))
            return results
        _, metrics = self._prediction_pass(dataset, prefix)
        self.log(metrics)
        self._publish(Evaluate, metrics=plain_metrics(metrics))
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    def _predict(self, dataset: Dataset[Any], prefix: str) -> PredictionOutput:
        output, metrics = self._prediction_pass(dataset, prefix)
        self._publish(Predict, metrics=plain_metrics(metrics))
        self.control = self.callback_handler.on_predict(
            self.args, self.state, self.control, metrics
        )
        return PredictionOutput(output.predictions, output.label_ids, metrics)

    def _prediction_pass(
        self, dataset: Dataset[Any], prefix: str
    ) -> tuple[EvalLoopOutput, dict[str, Any]]:
        loader = self.get_eval_dataloader(dataset)
        self.callback_handler.eval_dataloader = loader
        start_time = time.time()
        output = prediction_loop(
            self.model,
            loader,
            device=self.device,
            label_names=self._label_names(),
            prefix=prefix,
            compute_metrics=self.compute_metrics,
            nan_inf_filter=self.args.logging_nan_inf_filter,
            after_batch=self._prediction_step,
        )
        metrics = output.metrics
        metrics.update(
            speed_metrics(
                prefix, start_time, num_samples=output.num_samples, num_steps=output.num_batches
            )
        )
        return output, metrics

    def _prediction_step(self) -> None:
        self._publish(PredictionStep)
        self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)

    def _label_names(self) -> list[str]:
        return list(getattr(self.args, "label_names", None) or ["labels"])
