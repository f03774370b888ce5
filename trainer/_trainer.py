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
      Log(summary), [load best model], [Artifact(kind="model"): the final model, when a sink
      wants it], TrainEnd, RunFinished(status)

The ``Trainer`` is its public API in parts, one idea of transformers' each, so that this module
keeps only what makes a run: the constructor, ``train``/``train_async`` and the run around them
(the launcher, ``RunStarted``/``RunFinished``), event stamping, signals and callbacks. The rest
is inherited from mixins, each the overridable methods of one idea with the attributes it reads
declared for the type checker: loaders (``trainbus.trainer._trainer_data``), the training step
and its loss (``_trainer_loss``), evaluation and prediction (``_trainer_evaluation``), optimizer
and schedule (``_trainer_optimizers``), logs and files (``_trainer_reporting``). The refusal of
transformers' unimplemented members (``RefusesUnsupportedMethods``) comes last in the MRO, so
it only ever answers names no part defines.

The work itself lives in modules of its own: the training algorithm (``trainbus.trainer._loop``,
one ``TrainingLoop`` per ``train()``, which calls back the overridable methods), data loading
(``trainbus.trainer._data``, ``_loaders``), run length and resume position
(``trainbus.trainer._plan``), optimizers and schedules (``trainbus.trainer._optimizers``,
``_schedules``), files (``trainbus.trainer._checkpoint``), callback states
(``trainbus.trainer._resume``), the prediction loop (``trainbus.trainer._evaluation``), several
ranks (``trainbus.trainer._distributed``), mixed precision (``trainbus.trainer._precision``),
checkpointing, TF32 and compilation of the model (``trainbus.trainer._model_setup``). The loss is
summed on the device and read back only when a log entry is written, so steps that do not log
never wait for the device.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainbus.bus._bus import Bus, Mark
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import EventBase, InitEnd, RunFinished, RunStarted, RunStatus, TrialInfo
from trainbus.bus._sink import Sink
from trainbus.trainer._accounting import accepts_loss_kwargs, loss_shifts_labels
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._collators import DataCollator, default_collator_for
from trainbus.trainer._columns import can_return_loss, default_label_names
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._evaluation import EvalPrediction, TrainOutput
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._launcher import Launcher, launch_async, launch_blocking, resolve_launcher
from trainbus.trainer._lock import hold_output_dir
from trainbus.trainer._loop import TrainingLoop
from trainbus.trainer._model_setup import check_model_setup, configure_tf32
from trainbus.trainer._precision import Precision
from trainbus.trainer._preflight import check_before_training
from trainbus.trainer._progress import PrinterCallback, ProgressCallback
from trainbus.trainer._rng import seed_run
from trainbus.trainer._run_info import check_arguments, check_model_source, run_config
from trainbus.trainer._search import BestRun, HpSpace, Objective, search_hyperparameters
from trainbus.trainer._signals import stop_on_signals
from trainbus.trainer._state import TrainerControl, TrainerState
from trainbus.trainer._support import RefusesUnsupportedMethods
from trainbus.trainer._trainer_data import DataMixin
from trainbus.trainer._trainer_evaluation import EvaluationMixin, LogitsPreprocessor
from trainbus.trainer._trainer_loss import LossFunction, LossMixin
from trainbus.trainer._trainer_optimizers import (
    OptimizerClsAndKwargs,
    Optimizers,
    OptimizersMixin,
)
from trainbus.trainer._trainer_push import PushMixin
from trainbus.trainer._trainer_reporting import ReportingMixin

__all__ = ["Trainer"]

_now: Final = time.time

T = TypeVar("T")


class Trainer(
    DataMixin,
    LossMixin,
    EvaluationMixin,
    OptimizersMixin,
    ReportingMixin,
    PushMixin,
    RefusesUnsupportedMethods,
):
    """Trains ``model`` on ``train_dataset`` under ``args``, with Hugging Face's public API.

    Args:
        model: the model to train; may be ``None`` when ``model_init`` is given.
        args: the run's arguments (``TrainingArguments()`` when ``None``).
        data_collator: turns a list of samples into a batch; without it, a tokenizer (or
            sequence feature extractor) as ``processing_class`` gets transformers'
            ``DataCollatorWithPadding``, anything else ``default_data_collator``.
        train_dataset: the training samples.
        eval_dataset: the evaluation samples, or a dict of named evaluation sets.
        processing_class: the tokenizer or processor, saved with the model.
        model_init: builds a fresh model (no argument, or the hyper-parameter ``trial``); called
            under ``args.seed`` here and again at every ``train()``, which then starts from new
            weights and a new optimizer. Not together with ``model`` or ``optimizers``.
        compute_loss_func: ``(outputs, labels, num_items_in_batch=...) -> loss``, used instead of
            the model's own loss; it receives the label-token count of the whole update (see
            ``trainbus.trainer._accounting``) and must return a loss already scaled for it.
        compute_metrics: turns an ``EvalPrediction`` into metrics.
        callbacks: callbacks (classes or instances) after the default ones.
        optimizers: an optimizer and a schedule to use instead of the default ones.
        optimizer_cls_and_kwargs: an optimizer class (or factory) and its keyword arguments,
            built over the weight-decay groups instead of the one ``args.optim`` names; not
            together with ``optimizers``.
        preprocess_logits_for_metrics: ``(logits, labels) -> logits`` reduces each evaluation
            batch's logits (to their argmax, say) before they are kept for ``compute_metrics``.
        launcher: opens this trainer's runs instead of the one found by entry point (see
            ``trainbus.trainer._launcher``).
        sinks: sinks of the caller's own, added to every run.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset[Any] | None = None,
        eval_dataset: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_loss_func: LossFunction | None = None,
        compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        optimizers: Optimizers = (None, None),
        optimizer_cls_and_kwargs: OptimizerClsAndKwargs | None = None,
        preprocess_logits_for_metrics: LogitsPreprocessor | None = None,
        *,
        launcher: Launcher | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.args = args if args is not None else TrainingArguments()
        check_arguments(self.args, eval_dataset)
        check_model_source(model, model_init, optimizers)
        self.model_init = model_init
        # before model_init: its weights come from this seed
        seed_run(self.args.seed, full_determinism=self.args.full_determinism)
        if model is None:
            model = self.call_model_init()
        self.device: torch.device = self.args.device
        # precision: switches and checks once, before anything runs (trainer/_precision.py)
        configure_tf32(self.args)
        check_model_setup(self.args, model)
        self.precision = Precision.from_arguments(self.args, self.device)
        """Autocast, (scaled) backward and the optimizer step for ``bf16``/``fp16``."""
        self.is_in_train = False
        """Whether ``train()`` is running (an ``evaluate()`` from a callback sees ``True``)."""
        self.model = model.to(self.device)
        self.model_wrapped: nn.Module = self.model
        """What forward/backward run through: ``self.model``, or its DDP wrapper in a group."""
        self.model_accepts_loss_kwargs = accepts_loss_kwargs(self.model)
        """Whether the model's ``forward`` takes ``num_items_in_batch`` (decided here, once)."""
        self._loss_shifts_labels = loss_shifts_labels(self.model)
        self.compute_loss_func = compute_loss_func
        self.current_gradient_accumulation_steps = 1
        """Micro-batches in the update being trained (the last one of an epoch may be short)."""
        self._dist = Distributed(
            self.args.world_size,
            self.args.process_index,
            self.device,
            timeout=self.args.ddp_timeout_delta,
        )
        self.label_names = (
            default_label_names(self.model)
            if self.args.label_names is None
            else list(self.args.label_names)
        )
        """The batch keys holding labels: ``args.label_names``, else ``forward``'s (HF's rule)."""
        self.can_return_loss = can_return_loss(self.model)
        self._signature_columns: frozenset[str] | None = None
        """The columns batches keep (``remove_unused_columns``), worked out at the first loader."""
        self._eval_dataloaders: dict[str, DataLoader[Any]] = {}
        """Evaluation loaders kept for reuse when their workers persist."""
        self.data_collator = (
            data_collator if data_collator is not None else default_collator_for(processing_class)
        )
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.processing_class = processing_class
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        if optimizer_cls_and_kwargs is not None and self.optimizer is not None:
            raise ConfigurationError(
                "Trainer got both optimizers=(optimizer, ...) and optimizer_cls_and_kwargs; pass "
                "one: the built optimizer would make the class and kwargs unused."
            )
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
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
        self._trial: Any = None
        self._search_trial: Callable[[], TrialInfo] | None = None
        """The search trial the current run is (``RunStarted.trial``), read when the run starts
        (after ``model_init``, which may pick parameters too); set by the search."""
        # What transformers' hyperparameter_search sets on the trainer, for callbacks to read.
        self.hp_search_backend: str | None = None
        self.hp_space: HpSpace | None = None
        self.hp_name: Callable[[Any], str] | None = None
        self.compute_objective: Objective | None = None
        self.objective: Any = None
        """The last trial's objective: from its last evaluation during training, else after."""
        self._ignore_keys_for_eval: list[str] | None = None
        self._initial_num_input_tokens_seen = 0
        """``state.num_input_tokens_seen`` when the current ``train()`` began (tokens/s)."""
        self.hub_model_id = None
        self._pusher = None
        if self.args.push_to_hub:  # the destination is checked now, before any training
            self._push_destination()
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)
        config = getattr(self.model, "config", None)
        if config is not None:  # as transformers: a training forward keeps no key/value cache
            config.use_cache = self.args.use_cache

    # --- public API -----------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: bool | str | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> TrainOutput:
        """Train in this thread while the run's bus lives on a background event loop.

        Args:
            resume_from_checkpoint: a checkpoint directory, or ``True`` for the last one in
                ``output_dir``.
            trial: the hyper-parameter trial (an Optuna trial or a dict), handed to
                ``model_init`` and recorded in ``state.trial_params``.
            ignore_keys_for_eval: output keys the evaluations during training leave out.
            launcher: opens this call's run instead of the trainer's own (see
                ``trainbus.trainer._launcher``).

        With ``model_init``, the model is built afresh first (under ``args.seed``), with a new
        optimizer and schedule.

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
        # The checkpoint the preflight chose (every rank the same one): False resumes nothing.
        checkpoint = check_before_training(self.args, resume_from_checkpoint)
        self._begin_training(trial, ignore_keys_for_eval)
        body = functools.partial(self._train, False if checkpoint is None else str(checkpoint))
        self._stop_signal = None
        with hold_output_dir(self.args.output_dir), stop_on_signals(self._on_stop_signal):
            return self._run_blocking(body, launcher)

    async def train_async(
        self,
        resume_from_checkpoint: bool | str | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> TrainOutput:
        """Train in a worker thread; the running event loop hosts the bus and the sinks.

        The arguments are ``train()``'s. ``launcher`` opens this call's run instead of the
        trainer's own; ``Orchestrator.train`` passes itself, so training joins its open run.
        Signals belong to the host here: nothing is installed for them, and the host stops the
        run with ``request_stop()`` (or by cancelling this call, which calls it).
        """
        # The checkpoint the preflight chose (every rank the same one): False resumes nothing.
        checkpoint = check_before_training(self.args, resume_from_checkpoint)
        self._begin_training(trial, ignore_keys_for_eval)
        body = functools.partial(self._train, False if checkpoint is None else str(checkpoint))
        with hold_output_dir(self.args.output_dir):
            return await launch_async(
                self._launcher(launcher), self, functools.partial(self._work, body)
            )

    def hyperparameter_search(
        self,
        hp_space: HpSpace | None = None,
        compute_objective: Objective | None = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: Any = None,
        hp_name: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> BestRun | list[BestRun]:
        """Search hyper-parameters with Optuna, each trial a run of its own; needs ``model_init``.

        Args:
            hp_space: ``trial -> {argument: value}``, the space to search (default: transformers'
                learning rate, epochs, seed and batch size).
            compute_objective: ``metrics -> objective`` from ``evaluate()``'s metrics (default:
                ``eval_loss``, or the sum of the other metrics when there are any).
            n_trials: how many trials to run.
            direction: ``"minimize"`` or ``"maximize"``; a list of them for several objectives.
            backend: ``"optuna"`` or ``None``; transformers' other backends are refused.
            hp_name: ``trial -> name`` of the trial's directory and runs (``run-<number>``).
            kwargs: for ``optuna.create_study`` (``storage``, ``sampler``, ``pruner``,
                ``study_name``, ...) and ``study.optimize`` (``timeout``, ``gc_after_trial``,
                ``catch``).

        Returns:
            The best trial (a list of the best trials for several objectives). Trials run one
            after another in this process, each in ``<output_dir>/<trial name>``; see
            ``trainbus.trainer._search`` and ``docs/hyperparameter_search.md``.
        """
        return search_hyperparameters(
            self, hp_space, compute_objective, n_trials, direction, backend, hp_name, **kwargs
        )

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

    # --- the run around the work ----------------------------------------------------------------

    def _begin_training(self, trial: Any, ignore_keys_for_eval: list[str] | None) -> None:
        """Before a ``train()`` opens its run: the trial, and a fresh model from ``model_init``
        (under ``args.seed``, as Hugging Face does, with a new optimizer and schedule)."""
        self._trial = trial
        self._ignore_keys_for_eval = ignore_keys_for_eval
        if self.model_init is None:
            return
        seed_run(self.args.seed, full_determinism=self.args.full_determinism)
        self.model = self.call_model_init(trial).to(self.device)
        self.model_wrapped = self.model
        self.optimizer, self.lr_scheduler = None, None
        self._created_scheduler = False

    def _train(self, resume_from_checkpoint: bool | str | None) -> TrainOutput:
        """What ``train()`` runs inside a run: one ``TrainingLoop`` (``trainbus.trainer._loop``)."""
        self.is_in_train = True
        try:
            self._check_push_sink()
            output = TrainingLoop(self).run(resume_from_checkpoint)
            self._finish_current_push()  # a push started at the last save (trainer/_push.py)
            return output
        finally:
            self.is_in_train = False

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
            context = bus.context
            config = run_config(self.args, self.model, report_to=context.report_to)
            bus.emit(RunStarted, continued=context.continued, trial=self._trial_info(), **config)
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

    def _trial_info(self) -> TrialInfo | None:
        return None if self._search_trial is None else self._search_trial()

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
