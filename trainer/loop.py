"""The ``Trainer``: Hugging Face's training loop, with every callback point published on the bus.

Each event point is two lines: publish the event (non-blocking), then run the control callbacks
(the barrier) and keep the control they return. In order::

    train():  RunStarted, InitEnd (fired in __init__, published now), TrainBegin, [eval_on_start]
      for epoch:  EpochBegin
        for window of GA micro-batches:
          StepBegin, (forward, backward, SubstepEnd)*, forward, backward, clip,
          PreOptimizerStep, optimizer.step(), OptimizerStep, scheduler.step(), StepEnd,
          [Log] [PredictionStep*, Log, Evaluate] [Save, Artifact]
        EpochEnd, [Log] [PredictionStep*, Log, Evaluate] [Save, Artifact]
      Log(summary), [load best model], TrainEnd, RunFinished(status)

Features live in their own modules: data loading (``trainer.data``), run length and resume position
(``trainer.plan``), optimizer and schedules (``trainer.optim``), files (``trainer.checkpoint``),
callback states (``trainer.resume``), the prediction loop (``trainer.evaluation``), several
ranks (``trainer.distributed``). The loss is summed on the device and read back only when a log
entry is written, so steps that do not log never wait for the device.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from bus.bus import Bus
from bus.errors import ConfigurationError
from bus.events import (
    Artifact,
    EpochBegin,
    EpochEnd,
    Evaluate,
    EventBase,
    InitEnd,
    Log,
    OptimizerStep,
    Predict,
    PredictionStep,
    PreOptimizerStep,
    RunFinished,
    RunStarted,
    Save,
    StepBegin,
    StepEnd,
    SubstepEnd,
    TrainBegin,
    TrainEnd,
)
from bus.sink import Sink
from trainer import checkpoint as ckpt
from trainer.arguments import TrainingArguments
from trainer.data import (
    DataCollator,
    EpochSampler,
    default_data_collator,
    eval_dataloader,
    has_length,
    move_to_device,
    train_dataloader,
)
from trainer.distributed import Distributed
from trainer.evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    extract_loss,
    plain_metrics,
    prediction_loop,
    speed_metrics,
)
from trainer.flow import DefaultFlowCallback
from trainer.handler import CallbackHandler
from trainer.launcher import Launcher, resolve_launcher
from trainer.loss import LossSum
from trainer.optim import create_optimizer, create_scheduler
from trainer.plan import ResumePoint, RunPlan, plan_run, resume_point
from trainer.progress import PrinterCallback, ProgressCallback
from trainer.resume import exportable_objects, load_state, warn_overridden_arguments
from trainer.rng import capture_rng_state, restore_rng_state, set_seed
from trainer.run_info import check_arguments, record_best, run_config
from trainer.state import TrainerControl, TrainerState, restore_callback_states

__all__ = ["Trainer"]

logger = structlog.get_logger(__name__)
T = TypeVar("T")
Optimizers = tuple[torch.optim.Optimizer | None, LRScheduler | None]


class Trainer:
    """Trains ``model`` on ``train_dataset`` under ``args``, with Hugging Face's public API.

    Beyond Hugging Face's arguments: ``launcher`` overrides the launcher found by name (see
    ``trainer.launcher``), and ``sinks`` adds sinks of the caller's own to every run.
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
        self._init_end_pending = True
        self._stop_requested = False
        self._loss = LossSum(self.device, nan_inf_filter=self.args.logging_nan_inf_filter)
        self._total_loss = 0.0
        self._last_logged = 0
        self._grad_norm: torch.Tensor | None = None
        self._learning_rate = 0.0
        self._flos = 0.0
        self._created_scheduler = False
        self._count_flos: Callable[[dict[str, Any]], float] | None = getattr(
            self.model, "floating_point_ops", None
        )
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # --- public API -----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: bool | str | None = None) -> TrainOutput:
        """Train in this thread while the run's bus lives on a background event loop."""
        return self._run_blocking(functools.partial(self._train, resume_from_checkpoint))

    async def train_async(self, resume_from_checkpoint: bool | str | None = None) -> TrainOutput:
        """Train in a worker thread; the running event loop hosts the bus and the sinks."""
        launcher = self.launcher or resolve_launcher()
        body = functools.partial(self._train, resume_from_checkpoint)
        return await launcher.run_async(self, functools.partial(self._work, body))

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
        self._publish(Log, logs=plain_metrics(logs))
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def save_model(self, output_dir: str | None = None) -> Path:
        """Write weights, arguments and config to ``output_dir``.

        Inside a run (from a callback, say ``on_train_end``) it also publishes
        ``Artifact(kind="model")`` so sinks can upload it; after ``train()`` returned, the run and
        its bus are closed, and only the files are written.
        """
        target = Path(output_dir or self.args.output_dir)
        ckpt.save_model(target, self.model, self.args.to_dict(), self.processing_class)
        self._publish(Artifact, kind="model", path=str(target), name=target.name)
        return target

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

    def _run_blocking(self, body: Callable[[], T]) -> T:
        if self._bus is not None:  # already inside a run (a callback calling evaluate())
            return body()
        launcher = self.launcher or resolve_launcher()
        return launcher.run_blocking(self, functools.partial(self._work, body))

    def _work(self, body: Callable[[], T], bus: Bus) -> T:
        """What a launcher runs: bracket ``body`` with ``RunStarted`` and ``RunFinished``."""
        self._bus = self.callback_handler.bus = bus
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
            self._publish(RunFinished, status="completed" if done else "stopped")
            return result
        finally:
            self._bus = self.callback_handler.bus = None

    def _mark(self, event_type: type[EventBase]) -> None:
        """``_publish`` for the per-step events, which carry no fields of their own."""
        bus = self._bus
        if bus is not None:
            state = self.state
            bus.emit(event_type, global_step=state.global_step, epoch=state.epoch)

    def _publish(self, event_type: type[EventBase], **fields: Any) -> None:
        if self._bus is not None:
            self._bus.emit(
                event_type, global_step=self.state.global_step, epoch=self.state.epoch, **fields
            )

    # --- training -------------------------------------------------------------------------------

    def _train(self, resume_from_checkpoint: bool | str | None) -> TrainOutput:
        """HF spec §2.3: prepare, ``TrainBegin``, epochs, then the end of training."""
        args, handler = self.args, self.callback_handler
        checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        loader, plan, start = self._prepare_training(checkpoint)
        start_step, start_time = self.state.global_step, time.time()

        self._publish(TrainBegin, max_steps=plan.max_steps, num_train_epochs=plan.num_train_epochs)
        self.control = handler.on_train_begin(args, self.state, self.control)
        if self._stop_requested:  # asked before training began: on_train_begin reset the flag
            self.control.should_training_stop = True
        if checkpoint is not None:
            restore_rng_state(checkpoint / ckpt.rng_file(self._dist.rank, self._dist.world_size))
        if args.eval_on_start:
            self._evaluate_during_training(track_best=False)
        for epoch in range(start.epoch, plan.num_train_epochs):
            self._publish(EpochBegin)
            self.control = handler.on_epoch_begin(args, self.state, self.control)
            skip = start.updates_done if epoch == start.epoch else 0
            if not self._train_epoch(loader, epoch, plan, skip):
                logger.warning("epoch produced no batch; stopping training", epoch=epoch)
                self.control.should_training_stop = True
            self._publish(EpochEnd)
            self.control = handler.on_epoch_end(args, self.state, self.control)
            self._dist.merge(self.control)
            self._maybe_log_save_evaluate()
            self._dist.merge(self.control)
            if self.control.should_training_stop:
                break
        self._stop_requested = False  # a request is for this run, not the next train()
        return self._finish_training(start_time, start_step)

    def _checkpoint_to_resume(self, wanted: bool | str | None) -> Path | None:
        """HF ignores ``args.resume_from_checkpoint``; we honour it when ``train()`` got none."""
        resume_from = self.args.resume_from_checkpoint if wanted is None else wanted
        if not resume_from:
            return None
        return ckpt.find_checkpoint(self.args.output_dir, resume_from)

    def _prepare_training(
        self, checkpoint: Path | None
    ) -> tuple[DataLoader[Any], RunPlan, ResumePoint]:
        """Weights, loader, run length, state, optimizer and schedule, all before ``TrainBegin``."""
        args, handler = self.args, self.callback_handler
        if checkpoint is not None:
            ckpt.load_weights(self.model, checkpoint)
        self._dist.setup()
        self.model_wrapped = self._dist.wrap(self.model)
        loader = self.get_train_dataloader()
        plan = plan_run(
            batches_per_epoch=len(loader) if has_length(self.train_dataset) else None,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_steps=args.max_steps,
            num_train_epochs=args.num_train_epochs,
        )
        start = self._fresh_state(plan, checkpoint)
        if self._created_scheduler:  # a second train(): a fresh schedule for this run, as in HF
            self.lr_scheduler, self._created_scheduler = None, False
        self.create_optimizer_and_scheduler(plan.max_steps)
        assert self.optimizer is not None and self.lr_scheduler is not None  # set just above
        if checkpoint is not None:
            ckpt.load_optimizer_and_scheduler(
                checkpoint, self.optimizer, self.lr_scheduler, self.device
            )
        handler.model, handler.optimizer = self.model, self.optimizer
        handler.lr_scheduler, handler.train_dataloader = self.lr_scheduler, loader
        self._loss = LossSum(self.device, nan_inf_filter=args.logging_nan_inf_filter)
        self._total_loss = 0.0
        self._last_logged = self.state.global_step
        self.model.zero_grad(set_to_none=True)
        return loader, plan, start

    def _train_epoch(self, loader: DataLoader[Any], epoch: int, plan: RunPlan, skip: int) -> bool:
        """One epoch from update ``skip`` on; ``False`` when it produced no batch at all."""
        args, handler = self.args, self.callback_handler
        ga = args.gradient_accumulation_steps
        if isinstance(loader.sampler, EpochSampler):
            loader.sampler.set_epoch(epoch, start=skip * ga * args.per_device_train_batch_size)
        if loader.generator is not None:
            loader.generator.manual_seed(args.seed + epoch)
        steps_in_epoch = plan.batches_per_epoch or plan.updates_per_epoch * ga
        step = skip * ga - 1
        batches = iter(loader)
        if skip and not isinstance(loader.sampler, EpochSampler):
            for _ in range(skip * ga):  # no sampler to start later in: read and drop them
                next(batches, None)
        while window := _take(batches, ga):
            for index, batch in enumerate(window):
                step += 1
                if step % ga == 0:
                    self._mark(StepBegin)
                    self.control = handler.on_step_begin(args, self.state, self.control)
                last = index == len(window) - 1
                loss = self._training_step(batch, len(window), last)
                self._loss.add(loss, 1 + self.state.global_step - self._last_logged)
                if last:
                    self._optimizer_step(epoch + (step + 1) / steps_in_epoch)
                else:
                    self._mark(SubstepEnd)
                    self.control = handler.on_substep_end(args, self.state, self.control)
                if self._dist.enabled:  # every rank must leave at the same batch
                    self._dist.merge(self.control)
                if self._stop_requested:
                    self.control.should_training_stop = True
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    return True
            if plan.batches_per_epoch is None and step + 1 >= steps_in_epoch:
                break
        return step >= skip * ga

    def _training_step(self, batch: Any, window: int, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached, scaled loss.

        Gradients are synchronised across ranks on the ``last`` micro-batch of a window only.
        """
        if not self.model.training:  # evaluation switched it; train() walks every module
            self.model.train()
        inputs = move_to_device(batch, self.device)
        if self._count_flos is not None:
            self._flos += float(self._count_flos(inputs))
        if self._dist.enabled and not last:
            with self._dist.no_sync(self.model_wrapped, skip=True):
                return self._forward_backward(inputs, window)
        return self._forward_backward(inputs, window)

    def _forward_backward(self, inputs: dict[str, Any], window: int) -> torch.Tensor:
        loss = self.compute_loss(self.model_wrapped, inputs)
        if window > 1:
            loss = loss / window
        loss.backward()  # type: ignore[no-untyped-call]  # torch's stub is untyped
        return loss.detach()

    def _take_loss(self) -> float:
        """The loss summed since the last log entry (mean over ranks), read once; then zero."""
        if not self._dist.enabled:
            return self._loss.take()
        total = self._dist.mean(self._loss.as_tensor()).item()
        self._loss.clear()
        return float(total)

    def _optimizer_step(self, epoch: float) -> None:
        """Clip, step, schedule and advance ``global_step``, with the four events around it."""
        args, handler = self.args, self.callback_handler
        assert self.optimizer is not None and self.lr_scheduler is not None  # set by _train
        max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        self._grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self._mark(PreOptimizerStep)
        self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
        self.optimizer.step()
        self._mark(OptimizerStep)
        self.control = handler.on_optimizer_step(args, self.state, self.control)
        self._learning_rate = float(self.lr_scheduler.get_last_lr()[0])
        self.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.epoch = epoch
        self._mark(StepEnd)
        self.control = handler.on_step_end(args, self.state, self.control)
        if self._dist.enabled:
            self._dist.merge(self.control)
        self._maybe_log_save_evaluate()

    def _maybe_log_save_evaluate(self) -> None:
        """Log, then evaluate, then save, as the control flags say (HF spec §2.5)."""
        if self.control.should_log and self.state.global_step > self._last_logged:
            self.log(self._training_logs())
        if self.control.should_evaluate:
            is_new_best = self._evaluate_during_training(track_best=True)
            if self.args.save_strategy == "best":
                self.control.should_save = is_new_best
        if self.control.should_save:
            self._save_checkpoint()

    def _training_logs(self) -> dict[str, Any]:
        """``loss`` (mean per update since the last log), ``grad_norm``, ``learning_rate``."""
        loss = self._take_loss()
        self._total_loss += loss
        logs: dict[str, Any] = {"loss": loss / (self.state.global_step - self._last_logged)}
        if self._grad_norm is not None:
            logs["grad_norm"] = float(self._grad_norm.item())
        logs["learning_rate"] = self._learning_rate
        self._last_logged = self.state.global_step
        self.state.total_flos += self._flos
        self._flos = 0.0
        return logs

    def _evaluate_during_training(self, *, track_best: bool) -> bool:
        """Evaluate every eval set; returns whether the tracked metric reached a new best."""
        return record_best(self.args, self.state, self.evaluate(), update=track_best)

    def _save_checkpoint(self) -> None:
        """Write ``checkpoint-<step>``, rotate old ones, publish ``Save`` and ``Artifact``."""
        args, state = self.args, self.state
        if state.best_global_step is not None:
            best = ckpt.checkpoint_dir(args.output_dir, state.best_global_step)
            if best.is_dir() or state.best_global_step == state.global_step:
                state.best_model_checkpoint = str(best)
        state.record_callback_states(exportable_objects(self.callback_handler, self.control))
        rng_states = self._dist.gather(capture_rng_state())
        path = ckpt.checkpoint_dir(args.output_dir, state.global_step)
        if args.should_save:
            ckpt.write_checkpoint(
                args.output_dir,
                state.global_step,
                model=self.model,
                optimizer=None if args.save_only_model else self.optimizer,
                scheduler=None if args.save_only_model else self.lr_scheduler,
                write_state=lambda directory: state.save_to_json(directory / ckpt.STATE_NAME),
                args_dict=args.to_dict(),
                rng_states=rng_states,
            )
            ckpt.rotate_checkpoints(
                args.output_dir, args.save_total_limit, state.best_model_checkpoint
            )
        self._dist.barrier()
        self._publish(Save, checkpoint_dir=str(path))
        self._publish(Artifact, kind="checkpoint", path=str(path), name=path.name)
        if self._bus is not None:
            self._bus.fsync()
        self.control = self.callback_handler.on_save(args, state, self.control)

    def _finish_training(self, start_time: float, start_step: int) -> TrainOutput:
        """Summary log, best model, last rotation, ``TrainEnd`` (HF spec §2.3 step 10)."""
        args, state = self.args, self.state
        self._total_loss += self._take_loss()
        state.total_flos += self._flos
        self._flos = 0.0
        steps = max(state.global_step - start_step, 1)
        samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        metrics: dict[str, Any] = speed_metrics(
            "train", start_time, num_samples=samples * args.world_size, num_steps=steps
        )
        metrics["total_flos"] = state.total_flos
        metrics["train_loss"] = self._total_loss / steps
        self.log(metrics)
        best = state.best_model_checkpoint
        if args.load_best_model_at_end and best is not None and Path(best).is_dir():
            logger.info("loading the best model", checkpoint=best, metric=state.best_metric)
            ckpt.load_weights(self.model, Path(best))
        if args.save_total_limit == 1 and best is not None and args.should_save:
            ckpt.rotate_checkpoints(args.output_dir, 0, best, keep_only_best=True)
        self._publish(TrainEnd)
        self.control = self.callback_handler.on_train_end(args, state, self.control)
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _fresh_state(self, plan: RunPlan, checkpoint: Path | None) -> ResumePoint:
        """A new ``TrainerState`` for this run, or the checkpoint's; returns where to start."""
        args = self.args
        self.state = TrainerState(train_batch_size=args.train_batch_size)
        self.state.record_callback_states(exportable_objects(self.callback_handler, self.control))
        self.state.compute_steps(args, plan.max_steps)
        start = ResumePoint(0, 0)
        if checkpoint is not None:
            loaded = load_state(checkpoint)
            warn_overridden_arguments(self.state, loaded)
            if args.restore_callback_states_from_checkpoint:
                self.control = restore_callback_states(
                    loaded.stateful_callbacks, self.callback_handler, self.control
                )
            self.state = loaded
            start = resume_point(loaded.global_step, plan)
        self.state.init_training_references(self, plan.max_steps, plan.num_train_epochs)
        return start

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


def _take(batches: Any, count: int) -> list[Any]:
    """Up to ``count`` next items of an iterator (fewer at its end, none when exhausted)."""
    window = []
    for _ in range(count):
        try:
            window.append(next(batches))
        except StopIteration:
            break
    return window
