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
optimizers and schedules (``trainbus.trainer._optimizers``, ``_schedules``), files
(``trainbus.trainer._checkpoint``), callback states (``trainbus.trainer._resume``), the prediction
loop (``trainbus.trainer._evaluation``), several ranks (``trainbus.trainer._distributed``), mixed
precision (``trainbus.trainer._precision``), checkpointing, TF32 and compilation of the model
(``trainbus.trainer._model_setup``). The loss is summed on the device and read back only when a
log entry is written, so steps that do not log never wait for the device.
"""

from __future__ import annotations

import functools
import inspect
import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, overload

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
from trainbus.trainer._accounting import (
    accepts_loss_kwargs,
    count_label_items,
    flops_counter,
    loss_shifts_labels,
)
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._collators import DataCollator, default_collator_for
from trainbus.trainer._columns import can_return_loss, default_label_names
from trainbus.trainer._data import move_to_device
from trainbus.trainer._distributed import Distributed
from trainbus.trainer._evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    default_ignore_keys,
    evaluation_loop,
    extract_loss,
    output_logits,
    plain_metrics,
    speed_metrics,
)
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._gather import nested_detach
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._launcher import Launcher, launch_async, launch_blocking, resolve_launcher
from trainbus.trainer._loaders import evaluation_loader, training_loader
from trainbus.trainer._lock import hold_output_dir
from trainbus.trainer._loop import TrainingLoop
from trainbus.trainer._model_setup import check_model_setup, configure_tf32
from trainbus.trainer._optimizers import (
    build_optimizer,
    decay_parameter_names,
    optimizer_cls_and_kwargs,
    weight_groups,
)
from trainbus.trainer._precision import Precision
from trainbus.trainer._preflight import check_before_training
from trainbus.trainer._progress import PrinterCallback, ProgressCallback
from trainbus.trainer._results import metrics_table, save_results
from trainbus.trainer._rng import set_seed
from trainbus.trainer._run_info import check_arguments, check_model_source, run_config
from trainbus.trainer._schedules import create_scheduler
from trainbus.trainer._signals import stop_on_signals
from trainbus.trainer._state import TrainerControl, TrainerState
from trainbus.trainer._support import RefusesUnsupportedMethods

__all__ = ["Trainer"]

_now: Final = time.time

T = TypeVar("T")
Optimizers = tuple[torch.optim.Optimizer | None, LRScheduler | None]
OptimizerClsAndKwargs = tuple[Any, dict[str, Any]]
LogitsPreprocessor = Callable[[Any, Any], Any]
"""``preprocess_logits_for_metrics(logits, labels)``: what to keep of each batch's logits."""
EvalData = Dataset[Any] | Mapping[str, Dataset[Any]]
LossFunction = Callable[..., torch.Tensor]
"""``compute_loss_func(outputs, labels, num_items_in_batch=...)``: the loss of one micro-batch."""


class Trainer(RefusesUnsupportedMethods):
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

    loss_is_scaled_for_ga: ClassVar[bool | None] = None
    """Whether ``compute_loss`` returns a loss already scaled for gradient accumulation: ``True``
    means ``training_step`` uses it as is, ``False`` that it divides it by the number of
    micro-batches of the update. ``None`` (the default) decides per step as Hugging Face does: the
    loss counts as scaled when it was divided by ``num_items_in_batch`` (by the model, which
    takes loss keyword arguments, or by ``compute_loss_func``). A subclass computing its own loss
    sets it."""

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
        set_seed(self.args.seed)  # before model_init: its weights come from this seed
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
        self._dist = Distributed(self.args.world_size, self.args.process_index, self.device)
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
        self._ignore_keys_for_eval: list[str] | None = None
        self._initial_num_input_tokens_seen = 0
        """``state.num_input_tokens_seen`` when the current ``train()`` began (tokens/s)."""
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
        check_before_training(self.args, resume_from_checkpoint)
        self._begin_training(trial, ignore_keys_for_eval)
        body = functools.partial(self._train, resume_from_checkpoint)
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
        check_before_training(self.args, resume_from_checkpoint)
        self._begin_training(trial, ignore_keys_for_eval)
        body = functools.partial(self._train, resume_from_checkpoint)
        with hold_output_dir(self.args.output_dir):
            return await launch_async(
                self._launcher(launcher), self, functools.partial(self._work, body)
            )

    def evaluate(
        self,
        eval_dataset: EvalData | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, Any]:
        """Evaluate, log the metrics and fire ``on_evaluate``; returns the metrics.

        Parameters:
            eval_dataset: the data set to evaluate instead of the trainer's; a dict of them (or a
                trainer's dict, when none is given) evaluates each, with ``eval_<name>_`` keys;
                a string names one data set of the trainer's dict.
            ignore_keys: model outputs (of a dict output) left out of the predictions; the
                default is the model config's ``keys_to_ignore_at_inference``.
            metric_key_prefix: the prefix of every metric key (``eval_loss``).
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ConfigurationError("evaluate() needs an eval_dataset (argument or Trainer(...))")
        if self._bus is None:  # outside a run: open one around this call (an override of
            # evaluate() has run its own part already; only this one runs again inside)
            body = functools.partial(
                Trainer.evaluate, self, eval_dataset, ignore_keys, metric_key_prefix
            )
            return self._run_blocking(body)
        if isinstance(eval_dataset, Mapping) or (
            eval_dataset is None and isinstance(self.eval_dataset, Mapping)
        ):
            override = eval_dataset is not None
            datasets = eval_dataset if isinstance(eval_dataset, Mapping) else self.eval_dataset
            assert isinstance(datasets, Mapping)  # the condition above
            metrics: dict[str, Any] = {}
            for name, part in datasets.items():
                metrics.update(
                    self.evaluate(
                        part if override else name, ignore_keys, f"{metric_key_prefix}_{name}"
                    )
                )
            return metrics
        loader = self.get_eval_dataloader(eval_dataset)
        output = self._prediction_pass(
            loader,
            "Evaluation",
            # without compute_metrics there is nothing to gather predictions for
            prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )
        self.log(output.metrics)
        self._publish(Evaluate, metrics=plain_metrics(output.metrics))
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, output.metrics
        )
        return output.metrics

    def predict(
        self,
        test_dataset: Dataset[Any],
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Predictions, labels and metrics over ``test_dataset``; fires ``on_predict``, no log.

        Predictions of batches with different sequence lengths are padded with -100 to the
        longest and concatenated. ``ignore_keys`` and ``metric_key_prefix`` are as in
        ``evaluate()``.
        """
        if self._bus is None:  # outside a run: open one around this call, as evaluate() does
            body = functools.partial(
                Trainer.predict, self, test_dataset, ignore_keys, metric_key_prefix
            )
            return self._run_blocking(body)
        output = self._prediction_pass(
            self.get_test_dataloader(test_dataset),
            "Prediction",
            prediction_loss_only=None,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )
        self._publish(Predict, metrics=plain_metrics(output.metrics))
        self.control = self.callback_handler.on_predict(
            self.args, self.state, self.control, output.metrics
        )
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def evaluation_loop(
        self,
        dataloader: DataLoader[Any],
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """One pass over ``dataloader``, shared by ``evaluate()`` and ``predict()``.

        Parameters:
            dataloader: the batches.
            description: ``"Evaluation"`` or ``"Prediction"`` (with ``batch_eval_metrics``,
                prediction still keeps every batch's predictions).
            prediction_loss_only: collect only losses; ``None`` means
                ``args.prediction_loss_only``.
            ignore_keys: as in ``evaluate()``.
            metric_key_prefix: as in ``evaluate()``.
        """
        return evaluation_loop(
            self,
            dataloader,
            description=description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            prefix=metric_key_prefix,
        )

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """The loss, logits and labels of one evaluation batch (each may be ``None``).

        Parameters:
            model: the model to run (``self.model``).
            inputs: the batch, as the collator made it; moved to the device here.
            prediction_loss_only: return the loss alone.
            ignore_keys: model outputs left out of the logits (see ``evaluate()``).

        A loss is computed when the batch holds every label name (or the model has no labels
        and returns a loss by default, ``return_loss=True``); labels are read before the
        forward pass, in case it consumes them.
        """
        names = self.label_names
        has_labels = bool(names) and all(inputs.get(name) is not None for name in names)
        return_loss = inputs.get("return_loss")
        if return_loss is None:
            return_loss = self.can_return_loss
        with_loss = has_labels or (not names and bool(return_loss))
        inputs = move_to_device(inputs, self.device)
        if ignore_keys is None:
            ignore_keys = default_ignore_keys(self.model)
        labels: Any = None
        if with_loss and names:
            found = nested_detach(tuple(inputs.get(name) for name in names))
            labels = found[0] if len(found) == 1 else found
        with torch.no_grad():  # the one forward pass of evaluation, autocast as training
            loss, outputs = self._evaluation_forward(model, inputs, with_loss)
            if loss is not None:
                loss = loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        return loss, output_logits(outputs, has_loss=with_loss, ignore_keys=ignore_keys), labels

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        """Add ``epoch``, append to ``log_history``, publish ``Log`` and fire ``on_log``.

        Args:
            logs: the values to log; ``epoch`` (and, when tokens are counted,
                ``num_input_tokens_seen``) are added to it in place, as Hugging Face does.
            start_time: when this ``train()`` began; with ``include_num_input_tokens_seen``
                the entry also gets ``train_runtime`` and ``train_tokens_per_second`` so far.
        """
        logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            if start_time is not None:
                tokens = self.state.num_input_tokens_seen - self._initial_num_input_tokens_seen
                logs.update(speed_metrics("train", start_time, num_tokens=tokens))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._flush_marks()
        bus = self._bus
        if bus is not None:
            state = self.state
            bus.emit(
                Log, global_step=state.global_step, epoch=state.epoch, logs=plain_metrics(logs)
            )
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def log_metrics(self, split: str, metrics: Mapping[str, Any]) -> None:
        """Print ``metrics`` as an aligned table (runtimes as durations, ``total_flos`` in GF);
        world rank zero only.

        Args:
            split: the table's title: ``"train"``, ``"eval"``, ``"test"``…
            metrics: what ``train()``, ``evaluate()`` or ``predict()`` returned.
        """
        if self.is_world_process_zero():
            print(metrics_table(split, metrics))

    def save_metrics(self, split: str, metrics: Mapping[str, Any], combined: bool = True) -> None:
        """Write ``metrics`` to ``<output_dir>/<split>_results.json``; world rank zero only.

        Args:
            split: the file's prefix: ``"train"``, ``"eval"``, ``"test"``, ``"all"``…
            metrics: the raw numbers (not the table's rounded ones).
            combined: also merge them into ``all_results.json``, which collects every split.
        """
        if self.is_world_process_zero():
            save_results(self.args.output_dir, split, metrics, combined=combined)

    def save_state(self) -> None:
        """Write ``state`` to ``<output_dir>/trainer_state.json`` (``save_model`` writes only the
        model); world rank zero only."""
        if self.is_world_process_zero():
            directory = Path(self.args.output_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.state.save_to_json(directory / ckpt.STATE_NAME)

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
        """The training loader, in the order of ``train_sampling_strategy``: shuffled per epoch
        with a seed a resume can replay (see ``trainbus.trainer._samplers``)."""
        if self.train_dataset is None:
            raise ConfigurationError(
                "train() needs a train_dataset; pass Trainer(train_dataset=...)"
            )
        return training_loader(self, self.train_dataset)

    def get_eval_dataloader(
        self, eval_dataset: Dataset[Any] | str | None = None
    ) -> DataLoader[Any]:
        """A sequential loader over ``eval_dataset`` (default: the trainer's).

        Parameters:
            eval_dataset: a data set, or the name of one in the trainer's dict of them. With
                ``dataloader_persistent_workers`` the loader is built once per name and reused.
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ConfigurationError("evaluation needs an eval_dataset (argument or Trainer(...))")
        key = eval_dataset if isinstance(eval_dataset, str) else "eval"
        if self.args.dataloader_persistent_workers and key in self._eval_dataloaders:
            return self._eval_dataloaders[key]
        if isinstance(eval_dataset, str):
            dataset = self._named_eval_dataset(eval_dataset)
        else:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = evaluation_loader(self, dataset, "evaluation")
        if self.args.dataloader_persistent_workers:
            self._eval_dataloaders[key] = loader
        return loader

    def get_test_dataloader(self, test_dataset: Dataset[Any]) -> DataLoader[Any]:
        """A sequential loader over ``test_dataset``, for ``predict()``."""
        return evaluation_loader(self, test_dataset, "test")

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """The optimizer, then the schedule over ``num_training_steps`` (each unless given).

        Override this, or ``create_optimizer`` / ``create_scheduler``, for other ones; the loop
        calls it once per ``train()``, before ``on_train_begin``.
        """
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build ``self.optimizer`` unless it exists, and return it.

        Args:
            model: whose parameters to optimise; ``self.model`` by default.

        The parameters form two groups (``get_decay_parameter_names`` get ``weight_decay``,
        the others none); the class and its keyword arguments come from
        ``optimizer_cls_and_kwargs`` (constructor argument) when given, else from
        ``get_optimizer_cls_and_kwargs(args)``.
        """
        if self.optimizer is None:
            target = self.model if model is None else model
            groups = weight_groups(
                target, self.get_decay_parameter_names(target), self.args.weight_decay
            )
            optimizer_cls, kwargs = (
                self.optimizer_cls_and_kwargs
                if self.optimizer_cls_and_kwargs is not None
                else self.get_optimizer_cls_and_kwargs(self.args, target)
            )
            self.optimizer = build_optimizer(target, optimizer_cls, kwargs, groups)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LRScheduler:
        """Build ``self.lr_scheduler`` unless it exists, and return it.

        Args:
            num_training_steps: the run's length in optimizer steps (warm-up ratios apply to it).
            optimizer: the optimizer to schedule; ``self.optimizer`` by default.
        """
        if self.lr_scheduler is None:
            target = optimizer if optimizer is not None else self.optimizer
            if target is None:
                raise RuntimeError(
                    "create_scheduler() needs an optimizer: call create_optimizer() first or "
                    "pass optimizer=."
                )
            self.lr_scheduler = create_scheduler(
                self.args.lr_scheduler_type,
                target,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_scheduler = True
        return self.lr_scheduler

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The optimizer class ``args.optim`` names and its keyword arguments (``optim_args``
        parsed), without the parameters.

        Args:
            args: the training arguments.
            model: the model (Hugging Face's optimizers that need one are not implemented).
        """
        return optimizer_cls_and_kwargs(args)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Names of ``model``'s parameters that get weight decay: all but biases and norms.

        Args:
            model: the model whose ``named_parameters()`` names are returned.
        """
        return decay_parameter_names(model)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its loss, detached, as scaled for the
        update (what the logged loss sums). Override it to do more around a step.

        Args:
            model: what to run (``model_wrapped``: the DDP wrapper when distributed).
            inputs: the micro-batch, as the collator made it; moved to the device here.
            num_items_in_batch: the label tokens of the whole update, when counted (see
                ``trainbus.trainer._accounting``); ``compute_loss`` divides by it.
        """
        if not (model.training and self.model.training):  # evaluation switched it off
            model.train()  # (train() walks every module: only when needed)
        inputs = move_to_device(inputs, self.device)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        del inputs
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = self.compute_loss_func is not None or (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            )
        if not scaled and self.current_gradient_accumulation_steps > 1:
            loss = loss / self.current_gradient_accumulation_steps
        self._backward(loss)
        return loss.detach()

    @overload
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: Literal[False] = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor: ...

    @overload
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: Literal[True],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, Any]: ...

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The loss of one micro-batch: the model's own, or ``compute_loss_func``'s.

        Args:
            model: what to run.
            inputs: the micro-batch on the device (left unchanged).
            return_outputs: return ``(loss, outputs)`` instead of the loss alone.
            num_items_in_batch: the label tokens of the whole update, passed on to a model
                that takes loss keyword arguments and to ``compute_loss_func``.

        With ``average_tokens_across_devices`` and several ranks, a loss divided by the count
        of every rank is multiplied by the number of ranks, since the gradient all-reduce
        averages: the update is then the mean over every rank's tokens.
        """
        labels = None
        if self.compute_loss_func is not None and "labels" in inputs:
            labels = inputs["labels"]
            inputs = {key: value for key, value in inputs.items() if key != "labels"}
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        else:
            loss = extract_loss(outputs, inputs)
        if (
            self.args.average_tokens_across_devices
            and self.args.world_size > 1
            and num_items_in_batch is not None
            and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
        ):
            loss = loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs: Mapping[str, Any]) -> float:
        """The flops of one forward and backward pass over ``inputs``, summed into
        ``state.total_flos``: the model's ``floating_point_ops`` where it has one, else
        ``6 * tokens * parameters outside the embeddings``, else 0. Override it for other
        models; the loop then calls the override per micro-batch."""
        count = flops_counter(self.model)
        return 0.0 if count is None else count(inputs)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """A fresh model from ``model_init``: called with ``trial`` when it takes one argument.

        Raises ``ConfigurationError`` when there is no ``model_init``, when it takes more than
        one argument or when it returns ``None``.
        """
        model_init = self.model_init
        if model_init is None:
            raise ConfigurationError("call_model_init() needs Trainer(model_init=...)")
        parameters = inspect.signature(model_init).parameters
        if len(parameters) == 0:
            model = model_init()
        elif len(parameters) == 1:
            model = model_init(trial)
        else:
            raise ConfigurationError(
                f"model_init must take no argument or one (the trial); it takes {len(parameters)}"
            )
        if model is None:
            raise ConfigurationError("model_init returned None; it must return the model")
        return model

    def compute_loss_context_manager(self) -> AbstractContextManager[Any]:
        """The context a forward pass and its loss run in: autocast under ``bf16``/``fp16``.

        Entered around ``compute_loss`` in training and around the model in evaluation; override
        it to add a context of your own (transformers' seam of the same name).
        """
        return self.precision.autocast()

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss; scaled by the ``GradScaler`` under ``fp16``."""
        self.precision.backward(loss)

    # --- the run around the work ----------------------------------------------------------------

    def _begin_training(self, trial: Any, ignore_keys_for_eval: list[str] | None) -> None:
        """Before a ``train()`` opens its run: the trial, and a fresh model from ``model_init``
        (under ``args.seed``, as Hugging Face does, with a new optimizer and schedule)."""
        self._trial = trial
        self._ignore_keys_for_eval = ignore_keys_for_eval
        if self.model_init is None:
            return
        set_seed(self.args.seed)
        self.model = self.call_model_init(trial).to(self.device)
        self.model_wrapped = self.model
        self.optimizer, self.lr_scheduler = None, None
        self._created_scheduler = False

    def _flops_per_batch(self) -> Callable[[Mapping[str, Any]], float] | None:
        """What the loop calls per micro-batch to count flops, decided once per run: an
        overriding ``floating_point_ops``, else the model's rule with its parameter count taken
        now (``None``: nothing to count)."""
        if type(self).floating_point_ops is not Trainer.floating_point_ops:
            return self.floating_point_ops
        return flops_counter(self.model)

    def _train(self, resume_from_checkpoint: bool | str | None) -> TrainOutput:
        """What ``train()`` runs inside a run: one ``TrainingLoop`` (``trainbus.trainer._loop``)."""
        self.is_in_train = True
        try:
            return TrainingLoop(self).run(resume_from_checkpoint)
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

    def _prediction_pass(
        self,
        loader: DataLoader[Any],
        description: str,
        *,
        prediction_loss_only: bool | None,
        ignore_keys: list[str] | None,
        prefix: str,
    ) -> EvalLoopOutput:
        """``evaluation_loop``, then the speed metrics (steps of ``eval_batch_size`` per rank)."""
        start_time = time.time()
        self.precision.prepare_evaluation(self.model, in_train=self.is_in_train)
        output = self.evaluation_loop(
            loader, description, prediction_loss_only, ignore_keys, prefix
        )
        steps = math.ceil(output.num_samples / (self.args.eval_batch_size * self.args.world_size))
        output.metrics.update(
            speed_metrics(prefix, start_time, num_samples=output.num_samples, num_steps=steps)
        )
        return output

    def _evaluation_forward(
        self, model: nn.Module, batch: dict[str, Any], has_labels: bool
    ) -> tuple[torch.Tensor | None, Any]:
        """One evaluation batch as Hugging Face's ``prediction_step`` runs it: with labels,
        through ``compute_loss`` (so an override or ``compute_loss_func`` scores evaluation too)
        with this batch's own ``num_items_in_batch``; without, the model alone."""
        with self.compute_loss_context_manager():
            if not has_labels:
                return None, model(**batch)
            num_items = self._num_items_in_batch([batch]) if self._counts_items() else None
            loss, outputs = self.compute_loss(
                model, batch, return_outputs=True, num_items_in_batch=num_items
            )
        return loss, outputs

    def _counts_items(self) -> bool:
        """Whether losses are divided by ``num_items_in_batch`` (see ``_accounting``)."""
        return bool(self.model_accepts_loss_kwargs) or self.compute_loss_func is not None

    def _num_items_in_batch(self, batches: Sequence[Any]) -> torch.Tensor | None:
        """The label tokens of ``batches`` (one update's micro-batches, or one evaluation batch),
        summed over ranks with ``average_tokens_across_devices``, on the device.

        Whether batches are counted depends only on their keys, which every rank's collator
        makes alike, so every rank takes the all-reduce or none does.
        """
        count = count_label_items(batches, shift=self._loss_shifts_labels)
        if count is None:
            return None
        if self.args.average_tokens_across_devices and self._dist.enabled:
            count = self._dist.sum(count)
        return count.to(self.device, non_blocking=True)

    def _prediction_step(self) -> None:
        self._publish(PredictionStep)
        self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)

    # --- data ---------------------------------------------------------------------------------

    def _named_eval_dataset(self, name: str) -> Any:
        if not isinstance(self.eval_dataset, Mapping) or name not in self.eval_dataset:
            known = sorted(self.eval_dataset) if isinstance(self.eval_dataset, Mapping) else []
            raise ConfigurationError(
                f"eval_dataset {name!r} names no data set of Trainer(eval_dataset=...): it needs "
                f"a dict of data sets with that key (has {known})."
            )
        return self.eval_dataset[name]
