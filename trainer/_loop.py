"""The training loop itself: what ``Trainer.train()`` runs, from preparing to the summary log.

``TrainingLoop`` is a mixin of ``trainbus.trainer._trainer.Trainer``: the Trainer holds the public
API (Hugging Face's), the run around the work (bus, events, launcher) and evaluation; this class
holds the algorithm, in HF's order (spec §2.3-2.5): prepare, ``TrainBegin``, epochs of optimizer
steps with their four events each, log/evaluate/save as the flags say, then the end of training. The
state it shares with the Trainer is declared below; the Trainer sets all of it in ``__init__``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from trainbus.bus._bus import Bus
from trainbus.bus._events import (
    Artifact,
    EpochBegin,
    EpochEnd,
    EventBase,
    OptimizerStep,
    PreOptimizerStep,
    Save,
    StepBegin,
    StepEnd,
    SubstepEnd,
    TrainBegin,
    TrainEnd,
)
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._data import EpochSampler, has_length, iter_batches, move_to_device
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._evaluation import TrainOutput, speed_metrics
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._loss import LossSum
from trainbus.trainer._plan import ResumePoint, RunPlan, plan_run, resume_point
from trainbus.trainer._resume import exportable_objects, load_state, warn_overridden_arguments
from trainbus.trainer._rng import capture_rng_state, restore_rng_state
from trainbus.trainer._run_info import record_best
from trainbus.trainer._state import TrainerControl, TrainerState, restore_callback_states

__all__ = ["TrainingLoop"]

logger = structlog.get_logger(__name__)


class TrainingLoop:
    """The training algorithm of ``Trainer`` (see the module docstring)."""

    args: TrainingArguments
    state: TrainerState
    control: TrainerControl
    callback_handler: CallbackHandler
    model: nn.Module
    model_wrapped: nn.Module
    device: torch.device
    train_dataset: Dataset[Any] | None
    optimizer: torch.optim.Optimizer | None
    lr_scheduler: LRScheduler | None
    _dist: Distributed
    _loss: LossSum
    _total_loss: float
    _last_logged: int
    _grad_norm: torch.Tensor | None
    _learning_rate: float
    _flos: float
    _created_scheduler: bool
    _count_flos: Callable[[dict[str, Any]], float] | None
    _stop_requested: bool
    _bus: Bus | None

    if TYPE_CHECKING:  # provided by the Trainer

        def _publish(self, event_type: type[EventBase], **fields: Any) -> None: ...
        def _mark(self, event_type: type[EventBase]) -> None: ...
        def _flush_marks(self) -> None: ...
        def log(self, logs: dict[str, Any], start_time: float | None = None) -> None: ...
        def evaluate(self) -> dict[str, Any]: ...
        def get_train_dataloader(self) -> DataLoader[Any]: ...
        def create_optimizer_and_scheduler(self, num_training_steps: int) -> None: ...
        def compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor: ...
        def is_local_process_zero(self) -> bool: ...
        def is_world_process_zero(self) -> bool: ...

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
        batches = iter_batches(loader)
        if skip and not isinstance(loader.sampler, EpochSampler):
            for _ in range(skip * ga):  # no sampler to start later in: read and drop them
                next(batches, None)
        windows = ((batch,) for batch in batches) if ga == 1 else _windows(batches, ga)
        for window in windows:
            for index, batch in enumerate(window):
                step += 1
                if step % ga == 0:
                    self._mark(StepBegin)
                    self._flush_marks()
                    self.control = handler.on_step_begin(args, self.state, self.control)
                last = index == len(window) - 1
                loss = self._training_step(batch, len(window), last)
                self._loss.add(loss, 1 + self.state.global_step - self._last_logged)
                if last:
                    self._optimizer_step(epoch + (step + 1) / steps_in_epoch)
                else:
                    self._mark(SubstepEnd)
                    self._flush_marks()
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
        # Each walk of the module tree for its parameters costs several microseconds of Python;
        # walk it once and let clipping and zeroing share the list. A parameter a callback adds
        # in between has no gradient yet (it was not in this step's backward pass).
        params = list(self.model.parameters())
        self._grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        self._mark(PreOptimizerStep)
        self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
        self.optimizer.step()
        self._mark(OptimizerStep)
        self.control = handler.on_optimizer_step(args, self.state, self.control)
        self._learning_rate = float(self.lr_scheduler.get_last_lr()[0])
        self.lr_scheduler.step()
        _clear_grads(self.model, params)
        self.state.global_step += 1
        self.state.epoch = epoch
        self._mark(StepEnd)
        self._flush_marks()
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


def _clear_grads(model: nn.Module, params: list[nn.Parameter]) -> None:
    """``model.zero_grad(set_to_none=True)`` over parameters already listed (no second walk).

    A model that overrides ``zero_grad`` (in its class or on the instance) gets its own method
    called, as in Hugging Face.
    """
    if getattr(model.zero_grad, "__func__", None) is not nn.Module.zero_grad:
        model.zero_grad(set_to_none=True)
        return
    for param in params:
        if param.grad is not None:
            param.grad = None


def _windows(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive windows of ``size`` items (the last one shorter when the iterator runs out)."""
    while True:
        window = []
        for _ in range(size):
            try:
                window.append(next(batches))
            except StopIteration:
                break
        if not window:
            return
        yield window
