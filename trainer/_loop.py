"""The training loop: what ``Trainer.train()`` runs, from preparing to the summary log.

``TrainingLoop`` is one ``train()`` run. It receives the ``Trainer`` and works through it: the
trainer's overridable methods (``get_train_dataloader``, ``create_optimizer_and_scheduler``,
``training_step`` and the ``compute_loss`` it calls, ``floating_point_ops``, ``log``,
``evaluate``) are the ones it calls, the trainer's ``state`` and
``control`` are the ones it advances (callbacks and users read them there), and the trainer
publishes its events (``_publish``, or ``_mark`` and ``_flush_marks`` for the per-step ones). What
only the run needs (loss accumulators, gradient norm, learning rate, flops, the optimizer and
schedule in use) is this object's own state, set in ``__init__`` and ``_prepare``. In HF's order
(spec §2.3-2.5)::

    run():       prepare (ranks check they share one plan); TrainBegin; agree; [evaluate on start]
      for epoch:   EpochBegin; agree; _train_epoch; EpochEnd; _decide
      _finish:     Log(summary); [load best model]; [final model, Artifact]; TrainEnd
    _train_epoch, per window of GA micro-batches (read whole first, their label tokens counted):
                 StepBegin; (_micro_step, SubstepEnd, [agree])*; _micro_step; _optimizer_step
    _micro_step: trainer.training_step (forward, backward); count flops and tokens
    _optimizer_step:
                 clip; PreOptimizerStep; optimizer.step(); OptimizerStep; scheduler.step();
                 zero_grad; global_step += 1; StepEnd; _decide
    _decide:     this rank's signal or stop request into the flags; agree; _maybe_log_save_evaluate
    _maybe_log_save_evaluate (each action followed by: this rank's signal or request; agree):
                 [Log] [the sinks told to flush, when the training stops here]
                 [PredictionStep*, Log, Evaluate] [Save, Artifact]

Each event point is two lines: publish (or stamp) the event, then the handler's barrier, whose
returned control the trainer keeps.

Across ranks, nothing acts on a flag before it is agreed (``agree``: one small all-reduce; see
``trainbus.trainer._distributed``). The flags are read at three places only: whether to log,
evaluate and save (``_maybe_log_save_evaluate``, right after an agreement), and whether to stop
(after each micro-batch and each epoch, where ranks read the flags as last agreed). Between two
reads an agreement follows every hook that may have raised a flag: once per update after
``on_step_end``, and after each log entry, evaluation or save that ran. Signals and
``request_stop()`` are this rank's own news: they join the flags just before each of these
agreements (so a signal that came during a long evaluation or save stops the run at this
update). Inside an accumulation window there is no agreement unless a callback listens to
``on_substep_end`` (then after each micro-batch but the last) or ``on_step_begin`` (after the
first); a stop it raises then takes effect after that micro-batch on every rank, as Hugging
Face's does in one process.

The global RNG is drawn from exactly where Hugging Face's loop draws from it, so a script gives
the same dropout noise on both: the loaders draw their workers' base seed from it at every
``iter()`` (once per epoch, once per evaluation), batches are read one ahead of the one trained
(as accelerate's loader does, which matters to a collator that draws, such as masked-LM masking),
and a resumed run restores the checkpoint's RNG state where Hugging Face does: before the epoch's
``iter()`` when it resumes at an epoch boundary, else once the first window has been read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from trainbus.bus._events import (
    Artifact,
    EpochBegin,
    EpochEnd,
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
from trainbus.trainer._accounting import token_counter
from trainbus.trainer._agreement import (
    check_same_plan,
    data_length,
    data_lengths,
    rank_zero_metric,
    run_fingerprint,
)
from trainbus.trainer._data import EpochSampler, has_length, iter_batches
from trainbus.trainer._evaluation import TrainOutput, speed_metrics
from trainbus.trainer._final_model import publish_final_model
from trainbus.trainer._histograms import watch_steppers
from trainbus.trainer._loss import LossSum
from trainbus.trainer._model_setup import compile_model, enable_activation_checkpointing
from trainbus.trainer._plan import ResumePoint, RunPlan, plan_run, resume_point
from trainbus.trainer._precision import Steppers
from trainbus.trainer._resume import exportable_objects, load_state, warn_overridden_arguments
from trainbus.trainer._rng import capture_rng_state, restore_rng_state
from trainbus.trainer._run_info import record_best
from trainbus.trainer._schedules import step_on_metric, steps_on_metric
from trainbus.trainer._state import TrainerState, restore_callback_states
from trainbus.trainer._visibility import agree_on_best

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["TrainingLoop"]

logger = structlog.get_logger(__name__)


class TrainingLoop:
    """One ``train()`` run of ``trainer`` (see the module docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.args = trainer.args
        self.handler = trainer.callback_handler
        self.model = trainer.model
        self.model_wrapped = trainer.model_wrapped
        self.device = trainer.device
        self.dist = trainer._dist
        self.loss = LossSum(self.device, nan_inf_filter=self.args.logging_nan_inf_filter)
        """The training loss summed on the device since the last log entry."""
        self.total_loss = 0.0
        self.last_logged = 0
        """``global_step`` of the last log entry."""
        self.grad_norm: torch.Tensor | None = None
        self.learning_rate = 0.0
        self.flos = 0.0
        """Flops counted since they were last added to ``state.total_flos``."""
        self.count_flos = trainer._flops_per_batch()
        self.count_tokens = token_counter(
            str(self.args.include_num_input_tokens_seen),  # a str once the arguments are made
            self.model,
            getattr(trainer.processing_class, "pad_token_id", None),
        )
        self.count_items = trainer._counts_items()
        """Whether each window's label tokens are counted (``num_items_in_batch``)."""
        self.start_time = 0.0
        self.rng_to_restore: Path | None = None
        """The checkpoint RNG file a resumed run still has to load (see the module docstring)."""
        self.optimizer: torch.optim.Optimizer
        self.lr_scheduler: LRScheduler
        self.schedule_on_metric = False
        """Whether the schedule steps after evaluations (on the metric), not after updates."""
        self.steppers: Steppers
        """Clip, optimizer step and schedule, through the scaler under ``fp16`` (``_prepare``)."""
        self.saved_step = -1
        """``global_step`` of the last checkpoint this run wrote (a stop signal saves once)."""
        self.agreed_stop = (False, False)
        """``should_epoch_stop`` and ``should_training_stop`` as last agreed across ranks."""
        self.window_tokens = 0
        """Input tokens of this rank's micro-batches in the window, summed over ranks at its end."""

    def run(self, resume_from_checkpoint: bool | str | None) -> TrainOutput:
        """HF spec §2.3: prepare, ``TrainBegin``, epochs, then the end of training."""
        trainer, args, handler = self.trainer, self.args, self.handler
        if args.should_save:  # before any collective: no rank of this job can be saving yet
            removed = ckpt.recover_interrupted_saves(args.output_dir)
            if removed:
                logger.warning("removed_interrupted_saves", directories=[str(p) for p in removed])
        checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        loader, plan, start = self._prepare(checkpoint)
        start_step, start_time = trainer.state.global_step, time.time()
        self.start_time = start_time
        trainer._initial_num_input_tokens_seen = trainer.state.num_input_tokens_seen

        trainer._publish(
            TrainBegin, max_steps=plan.max_steps, num_train_epochs=plan.num_train_epochs
        )
        trainer.control = handler.on_train_begin(args, trainer.state, trainer.control)
        if trainer._stop_requested:  # asked before training began: on_train_begin reset the flag
            trainer.control.should_training_stop = True
        self._agree("the start of training")
        if checkpoint is not None and not args.resume_only_model:
            self.rng_to_restore = checkpoint / ckpt.rng_file(self.dist.rank, self.dist.world_size)
        if args.eval_on_start:
            self._evaluate_during_training(track_best=False)
        for epoch in range(start.epoch, plan.num_train_epochs):
            trainer._publish(EpochBegin)
            trainer.control = handler.on_epoch_begin(args, trainer.state, trainer.control)
            self._agree("the start of an epoch")
            skip = start.updates_done if epoch == start.epoch else 0
            if not self._train_epoch(loader, epoch, plan, skip):
                logger.warning("epoch produced no batch; stopping training", epoch=epoch)
                trainer.control.should_training_stop = True
            trainer._publish(EpochEnd)
            trainer.control = handler.on_epoch_end(args, trainer.state, trainer.control)
            self._decide("the end of an epoch")
            if self._stopping(training_only=True):
                break
        trainer._stop_requested = False  # a request is for this run, not the next train()
        return self._finish(start_time, start_step)

    def _checkpoint_to_resume(self, wanted: bool | str | None) -> Path | None:
        """HF ignores ``args.resume_from_checkpoint``; we honour it when ``train()`` got none."""
        resume_from = self.args.resume_from_checkpoint if wanted is None else wanted
        if not resume_from:
            return None
        return ckpt.find_checkpoint(self.args.output_dir, resume_from)

    def _prepare(self, checkpoint: Path | None) -> tuple[DataLoader[Any], RunPlan, ResumePoint]:
        """Weights, loader, run length, state, optimizer and schedule, all before ``TrainBegin``."""
        trainer, args, handler = self.trainer, self.args, self.handler
        if checkpoint is not None:
            ckpt.load_weights(self.model, checkpoint)
        self.dist.setup()
        if args.activation_checkpointing:  # before the optimizer is built, as transformers does
            kwargs = args.activation_checkpointing_kwargs  # JSON text was read into a dict
            kwargs = kwargs if isinstance(kwargs, dict) else None
            enable_activation_checkpointing(self.model, kwargs)
        wrapped = compile_model(self.dist.wrap(self.model), args)  # compiled last, as accelerate
        self.model_wrapped = trainer.model_wrapped = wrapped
        loader = trainer.get_train_dataloader()
        plan = plan_run(
            batches_per_epoch=len(loader) if has_length(trainer.train_dataset) else None,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_steps=args.max_steps,
            num_train_epochs=args.num_train_epochs,
        )
        start = self._fresh_state(plan, checkpoint)
        if self.dist.enabled:  # before the first collective that a differing plan would skew
            self.dist.at("checking that every rank runs the same plan")
            fingerprint = run_fingerprint(
                args,
                plan,
                trainer.state,
                train_length=data_length(trainer.train_dataset),
                eval_lengths=data_lengths(trainer.eval_dataset),
            )
            check_same_plan(self.dist, fingerprint)
        if trainer._created_scheduler:  # a second train(): a fresh schedule for this run, as in HF
            trainer.lr_scheduler, trainer._created_scheduler = None, False
        trainer.create_optimizer_and_scheduler(plan.max_steps)
        if trainer.optimizer is None or trainer.lr_scheduler is None:
            raise RuntimeError(
                "create_optimizer_and_scheduler() left trainer.optimizer or trainer.lr_scheduler "
                "unset; an override must set both."
            )
        self.optimizer, self.lr_scheduler = trainer.optimizer, trainer.lr_scheduler
        self.schedule_on_metric = steps_on_metric(self.lr_scheduler)
        self.steppers = trainer.precision.steppers(self.optimizer, self.lr_scheduler)
        if self.schedule_on_metric:  # chosen once: no per-step test
            self.steppers = self.steppers._replace(schedule=_no_step)
        self.steppers = watch_steppers(self.steppers, trainer)  # unchanged unless a sink asks
        if checkpoint is not None and not args.resume_only_model:
            ckpt.load_optimizer_and_scheduler(
                checkpoint, self.model, self.optimizer, self.lr_scheduler, self.device
            )
        handler.model, handler.optimizer = self.model, self.optimizer
        handler.lr_scheduler, handler.train_dataloader = self.lr_scheduler, loader
        self.last_logged = trainer.state.global_step
        self.model.zero_grad(set_to_none=True)
        return loader, plan, start

    def _fresh_state(self, plan: RunPlan, checkpoint: Path | None) -> ResumePoint:
        """A new ``TrainerState`` for this run, or the checkpoint's; returns where to start."""
        trainer, args = self.trainer, self.args
        trainer.state = TrainerState(train_batch_size=args.train_batch_size)
        trainer.state.is_hyper_param_search = trainer._trial is not None
        trainer.state.record_callback_states(exportable_objects(self.handler, trainer.control))
        trainer.state.compute_steps(args, plan.max_steps)
        start = ResumePoint(0, 0)
        if checkpoint is not None:
            loaded = load_state(checkpoint)
            warn_overridden_arguments(trainer.state, loaded)
            if args.restore_callback_states_from_checkpoint:
                trainer.control = restore_callback_states(
                    loaded.stateful_callbacks, self.handler, trainer.control
                )
            trainer.state = loaded
            start = resume_point(loaded.global_step, plan)
        trainer.state.init_training_references(
            trainer, plan.max_steps, plan.num_train_epochs, trainer._trial
        )
        return start

    def _train_epoch(self, loader: DataLoader[Any], epoch: int, plan: RunPlan, skip: int) -> bool:
        """One epoch from update ``skip`` on; ``False`` when it produced no batch at all."""
        trainer, args, handler = self.trainer, self.args, self.handler
        ga = args.gradient_accumulation_steps
        if isinstance(loader.sampler, EpochSampler):
            loader.sampler.set_epoch(epoch, start=skip * ga * args.per_device_train_batch_size)
        if loader.generator is not None:
            loader.generator.manual_seed(args.seed + epoch)
        steps_in_epoch = plan.batches_per_epoch or plan.updates_per_epoch * ga
        # Whether a callback may raise a flag inside a window, which ranks must then agree on
        # before the stop test after the micro-batch: after every one (on_substep_end), or
        # after the first (on_step_begin, which runs before it).
        after_each = self.dist.enabled and bool(handler.listeners("on_substep_end"))
        after_first = self.dist.enabled and bool(handler.listeners("on_step_begin"))
        step = skip * ga - 1
        if not skip:
            self._restore_rng()  # before the loader's draw, which the checkpoint did not see
        batches = _read_ahead(iter_batches(loader))
        if skip and not isinstance(loader.sampler, EpochSampler):
            for _ in range(skip * ga):  # no sampler to start later in: read and drop them
                next(batches, None)
        windows = ((batch,) for batch in batches) if ga == 1 else _windows(batches, ga)
        for window in windows:
            trainer.current_gradient_accumulation_steps = len(window)
            num_items = trainer._num_items_in_batch(window) if self.count_items else None
            if self.rng_to_restore is not None:  # resumed mid-epoch: the window is read now
                self._restore_rng()
            for index, batch in enumerate(window):
                step += 1
                if step % ga == 0:
                    trainer._mark(StepBegin)
                    trainer._flush_marks()
                    trainer.control = handler.on_step_begin(args, trainer.state, trainer.control)
                last = index == len(window) - 1
                loss = self._micro_step(batch, num_items, last)
                self.loss.add(loss, 1 + trainer.state.global_step - self.last_logged)
                if last:
                    self._optimizer_step(epoch + (step + 1) / steps_in_epoch)
                else:
                    trainer._mark(SubstepEnd)
                    trainer._flush_marks()
                    trainer.control = handler.on_substep_end(args, trainer.state, trainer.control)
                    if after_each or (after_first and index == 0):
                        self._agree("an accumulation window")
                if self._stopping():  # every rank leaves at the same micro-batch
                    self._count_window_tokens()  # those of a window left in its middle
                    return True
            if plan.batches_per_epoch is None and step + 1 >= steps_in_epoch:
                break
        return step >= skip * ga

    def _restore_rng(self) -> None:
        """Load the resumed checkpoint's RNG state, once per run."""
        path, self.rng_to_restore = self.rng_to_restore, None
        if path is not None:
            restore_rng_state(path)

    def _micro_step(self, batch: Any, num_items: torch.Tensor | None, last: bool) -> torch.Tensor:
        """``trainer.training_step`` on one micro-batch, then its flops and tokens counted.

        Gradients are synchronised across ranks on the ``last`` micro-batch of a window only.
        """
        trainer = self.trainer
        if self.dist.enabled and not last:
            with self.dist.no_sync(self.model_wrapped, skip=True):
                loss = trainer.training_step(self.model_wrapped, batch, num_items)
        else:
            loss = trainer.training_step(self.model_wrapped, batch, num_items)
        if self.count_flos is not None:
            self.flos += self.count_flos(batch)
        if self.count_tokens is not None:
            tokens = self.count_tokens(batch)
            if self.dist.enabled:  # summed over ranks once per window, not per micro-batch
                self.window_tokens += tokens
                if last:
                    self._count_window_tokens()
            else:
                trainer.state.num_input_tokens_seen += tokens
        return loss

    def _count_window_tokens(self) -> None:
        """Add the input tokens of every rank's micro-batches since the last call (one sum)."""
        if self.dist.enabled and self.count_tokens is not None:
            window = torch.tensor(self.window_tokens, dtype=torch.int64)
            self.trainer.state.num_input_tokens_seen += int(self.dist.sum(window).item())
            self.window_tokens = 0

    def _optimizer_step(self, epoch: float) -> None:
        """Clip, step, schedule and advance ``global_step``, with the four events around it."""
        trainer, args, handler = self.trainer, self.args, self.handler
        max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        # Each walk of the module tree for its parameters costs several microseconds of Python;
        # walk it once and let clipping and zeroing share the list. A parameter a callback adds
        # in between has no gradient yet (it was not in this step's backward pass).
        params = list(self.model.parameters())
        # Under fp16 these unscale before clipping, and a step the scaler skips (inf/NaN
        # gradients) leaves the schedule where it was; global_step and the events go on.
        clip, step, schedule = self.steppers
        self.grad_norm = clip(params, max_norm)
        trainer._mark(PreOptimizerStep)
        trainer.control = handler.on_pre_optimizer_step(args, trainer.state, trainer.control)
        step()
        trainer._mark(OptimizerStep)
        trainer.control = handler.on_optimizer_step(args, trainer.state, trainer.control)
        self.learning_rate = float(self.lr_scheduler.get_last_lr()[0])
        schedule()
        _clear_grads(self.model, params)
        state = trainer.state
        state.global_step += 1
        state.epoch = epoch
        trainer._mark(StepEnd)
        trainer._flush_marks()
        trainer.control = handler.on_step_end(args, state, trainer.control)
        self._decide("the end of an update")

    def _agree(self, where: str) -> None:
        """Merge the flags across ranks (raised anywhere: raised everywhere) and note the stop
        flags as agreed, which is what ``_stopping`` reads; nothing in a single process."""
        if not self.dist.enabled:
            return
        control = self.trainer.control
        self.dist.at(f"{where} (step {self.trainer.state.global_step})")
        self.dist.merge(control)
        self.agreed_stop = (control.should_epoch_stop, control.should_training_stop)

    def _stopping(self, *, training_only: bool = False) -> bool:
        """Whether to stop the epoch (or, ``training_only``, the training) here: the flags as
        last agreed across ranks; in a single process, the flags themselves."""
        if self.dist.enabled:
            epoch_stop, training_stop = self.agreed_stop
        else:
            control = self.trainer.control
            epoch_stop, training_stop = control.should_epoch_stop, control.should_training_stop
        return training_stop if training_only else epoch_stop or training_stop

    def _decide(self, where: str) -> None:
        """The decision point of an update or an epoch: the ranks agree (with this rank's own
        stop news), and the agreed flags say whether to log, evaluate and save."""
        self._agree_with_news(where)
        self._maybe_log_save_evaluate()

    def _agree_with_news(self, where: str) -> None:
        """``_agree``, this rank's signal or stop request joining the flags first."""
        self._stop_on_signal()
        if self.trainer._stop_requested:
            self.trainer.control.should_training_stop = True
        self._agree(where)

    def _stop_on_signal(self) -> None:
        """Turn a received SIGTERM/SIGINT into this rank's stop and final-save flags.

        Called only just before the flags are agreed across ranks (``_agree_with_news``), and the
        signal's flag is read nowhere else: every rank then stops, and saves, on the agreed
        flags, so a rank that got the signal a moment later (or not at all) still takes the same
        collectives. The save is asked for when ``save_strategy`` writes checkpoints and this
        step has none yet.
        """
        if self.trainer._stop_signal is None:
            return
        control, step = self.trainer.control, self.trainer.state.global_step
        control.should_training_stop = True
        if self.args.save_strategy != "no" and 0 < step != self.saved_step:
            control.should_save = True

    def _maybe_log_save_evaluate(self) -> None:
        """Log, then evaluate, then save, as the agreed control flags say (HF spec §2.5).

        Each action that ran is followed by an agreement (its hooks may have raised a flag, a
        signal may have come meanwhile), so the next action reads flags every rank shares.
        """
        trainer = self.trainer
        if trainer.control.should_log and trainer.state.global_step > self.last_logged:
            trainer.log(self._training_logs(), self.start_time)
            self._agree_with_news("after a log entry")
        if self._stopping(training_only=True) and (
            trainer.control.should_evaluate or trainer.control.should_save
        ):
            self._flush_before_final_work()
        if trainer.control.should_evaluate:
            is_new_best = self._evaluate_during_training(track_best=True)
            if self.args.save_strategy == "best":  # agreed: rank 0's metric decides
                trainer.control.should_save = is_new_best
            self._agree_with_news("after an evaluation")
        if trainer.control.should_save:
            self._save_checkpoint()
            self._agree_with_news("after a save")

    def _flush_before_final_work(self) -> None:
        """Let the sinks deliver what training published while the final evaluation, save or
        model runs (``Bus.begin_flush``), instead of after it: the end of ``train()`` then
        waits for that work or for the sinks, not for both in turn."""
        trainer = self.trainer
        trainer._flush_marks()
        if trainer._bus is not None:
            trainer._bus.begin_flush()

    def _take_loss(self) -> float:
        """The loss summed since the last log entry (mean over ranks), read once; then zero."""
        if not self.dist.enabled:
            return self.loss.take()
        total = self.dist.mean(self.loss.as_tensor()).item()
        self.loss.clear()
        return float(total)

    def _training_logs(self) -> dict[str, Any]:
        """``loss`` (mean per update since the last log), ``grad_norm``, ``learning_rate``."""
        state = self.trainer.state
        loss = self._take_loss()
        self.total_loss += loss
        logs: dict[str, Any] = {"loss": loss / (state.global_step - self.last_logged)}
        if self.grad_norm is not None:
            logs["grad_norm"] = float(self.grad_norm.item())
        logs["learning_rate"] = self.learning_rate
        self.last_logged = state.global_step
        self._store_flos()
        return logs

    def _store_flos(self) -> None:
        """Add the flops counted since the last call (of every rank) to ``state.total_flos``."""
        flos = self.flos
        if self.dist.enabled:
            flos = float(self.dist.sum(torch.tensor(flos, dtype=torch.float64)).item())
        self.trainer.state.total_flos += flos
        self.flos = 0.0

    def _evaluate_during_training(self, *, track_best: bool) -> bool:
        """Evaluate every eval set; returns whether the tracked metric reached a new best."""
        trainer = self.trainer
        metrics = trainer.evaluate(ignore_keys=trainer._ignore_keys_for_eval)
        metrics = rank_zero_metric(self.dist, self.args, metrics)
        is_new_best = record_best(self.args, trainer.state, metrics, update=track_best)
        if track_best and self.schedule_on_metric:  # as in HF: not after eval_on_start
            step_on_metric(self.lr_scheduler, self.args, metrics)
        return is_new_best

    def _save_checkpoint(self) -> None:
        """Write ``checkpoint-<step>``, rotate old ones, publish ``Save`` and ``Artifact``."""
        trainer, args, state = self.trainer, self.args, self.trainer.state
        self._store_flos()  # the state written holds the flops of every step so far (every rank)
        if state.best_global_step is not None:
            best = ckpt.checkpoint_dir(args.output_dir, state.best_global_step)
            # agreed: a rank on a node that does not see the saving rank's files still names it
            if state.best_global_step == state.global_step or self.dist.any_rank(best.is_dir()):
                state.best_model_checkpoint = str(best)
        state.record_callback_states(exportable_objects(self.handler, trainer.control))
        rng_states = [] if args.save_only_model else self._gather_rng_states()
        path = ckpt.checkpoint_dir(args.output_dir, state.global_step)
        self.saved_step = state.global_step
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
                processing_class=trainer.processing_class,
                data_collator=trainer.data_collator,
            )
            trainer._push_from_checkpoint(path)  # hub_strategy (trainer/_push.py)
            ckpt.rotate_checkpoints(
                args.output_dir, args.save_total_limit, state.best_model_checkpoint
            )
        self.dist.barrier()
        trainer._publish(Save, checkpoint_dir=str(path))
        trainer._publish(Artifact, kind="checkpoint", path=str(path), name=path.name)
        if trainer._bus is not None:
            trainer._bus.fsync()
        trainer.control = self.handler.on_save(args, state, trainer.control)

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's generator states, in rank order (a collective in a group)."""
        return self.dist.gather(capture_rng_state(distributed=self.dist.enabled))

    def _load_best_model(self) -> None:
        """Load the best checkpoint's weights: on every rank the same one, or on none.

        Alone, the best checkpoint is loaded if its directory is still there. In a group rank
        zero's best is the job's, and a rank that cannot read it raises on every rank
        (``trainbus.trainer._visibility.agree_on_best``), so no rank ends on other weights.
        """
        state = self.trainer.state
        if self.dist.enabled:
            best_dir = agree_on_best(self.args, state)
        else:
            best = state.best_model_checkpoint
            best_dir = Path(best) if best is not None and Path(best).is_dir() else None
        if best_dir is not None:
            logger.info(
                "loading the best model", checkpoint=str(best_dir), metric=state.best_metric
            )
            ckpt.load_weights(self.model, best_dir)

    def _finish(self, start_time: float, start_step: int) -> TrainOutput:
        """Summary log, best model, last rotation, ``TrainEnd`` (HF spec §2.3 step 10)."""
        trainer, args, state = self.trainer, self.args, self.trainer.state
        self.total_loss += self._take_loss()
        self._store_flos()
        steps = max(state.global_step - start_step, 1)
        samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        metrics: dict[str, Any] = speed_metrics(
            "train", start_time, num_samples=samples * args.world_size, num_steps=steps
        )
        metrics["total_flos"] = state.total_flos
        metrics["train_loss"] = self.total_loss / steps
        trainer.log(metrics)
        best = state.best_model_checkpoint
        if args.load_best_model_at_end:
            self._load_best_model()
        if args.save_total_limit == 1 and best is not None and args.should_save:
            ckpt.rotate_checkpoints(args.output_dir, 0, best, keep_only_best=True)
        if trainer._bus is not None and trainer._bus.context.wants_final_model:
            self._flush_before_final_work()  # writing the final model is a save too
        publish_final_model(trainer)  # only when a sink uploads it (trainer/_final_model.py)
        trainer._publish(TrainEnd)
        trainer.control = self.handler.on_train_end(args, state, trainer.control)
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)


def _no_step() -> None:
    """The per-update step of a schedule that steps on the evaluation metric instead."""


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


def _read_ahead(batches: Iterator[Any]) -> Iterator[Any]:
    """The same batches, each one yielded only once the next has been read (or the end seen).

    accelerate's loader, which Hugging Face's ``Trainer`` trains from, reads one batch ahead
    to know which is last; a collator that draws from the global RNG (masked-LM masking) thus
    draws for batch ``n + 1`` before the forward pass of batch ``n`` draws its dropout, and this
    order is kept so both loops give the same numbers.
    """
    current = next(batches, _END)
    if current is _END:
        return
    for following in batches:
        yield current
        current = following
    yield current


_END: Final = object()


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
