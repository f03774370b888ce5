"""``TrainbusCallback``: keep ``transformers.Trainer``, report through trainbus.

A user who will not switch trainers adds one callback::

    from trainbus import TrainbusCallback

    trainer = transformers.Trainer(..., args=TrainingArguments(report_to=["mlflow"]),
                                   callbacks=[TrainbusCallback()])

and transformers' hooks publish trainbus's events (the envelope and types our own ``Trainer``
publishes) onto a bus whose loop runs in a thread of its own: the run is journaled under
``<output_dir>/trainbus/<run id>/``, the ``report_to`` integrations are trainbus's sinks
(resolved by our registry), a slow tracker never holds up a step, and ``trainbus sync/show/plot``
work on the run directory. transformers' own callbacks for the integrations taken over are
removed from the trainer (``trainbus.orchestrator._hf_takeover``), so nothing is logged twice.

Which hook publishes what (each event stamped with ``state.global_step`` and ``state.epoch``)::

    on_init_end         remembered; InitEnd follows the first RunStarted
    on_train_begin      open the run: RunStarted(continued), [InitEnd], TrainBegin
    on_epoch_begin/end  EpochBegin / EpochEnd
    on_step_begin       StepBegin;  on_substep_end: SubstepEnd
    on_pre_optimizer_step, on_optimizer_step, on_step_end
                        PreOptimizerStep, OptimizerStep, StepEnd, stamped at their hook and
                        published together at the step's end
    on_log / on_evaluate / on_predict / on_prediction_step
                        Log / Evaluate / Predict / PredictionStep
    on_save             Save, Artifact(kind="checkpoint")
    on_push_begin       PushBegin
    on_train_end        [Artifact(kind="model") when a sink wants the final model], TrainEnd,
                        RunFinished("completed", or "stopped" before max_steps); close the run

``evaluate()`` and ``predict()`` outside ``train()`` open the run again at their first hook
(``RunStarted(continued=True)``: one tracker run per training run) and close it at
``on_evaluate``/``on_predict``. A ``train()`` that raises never reaches ``on_train_end``: its run
is closed as ``failed`` by the next ``train()`` of the callback or at interpreter exit (with the
exception's text when the program dies of it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from trainbus.bus._env import SINK_PROCESS_VARIABLE
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import (
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
    PushBegin,
    RunStarted,
    Save,
    StepBegin,
    StepEnd,
    SubstepEnd,
    TrainBegin,
    TrainEnd,
)
from trainbus.bus._sink import Sink
from trainbus.orchestrator import _hf_takeover
from trainbus.orchestrator._bridge_run import BridgeRun, close_at_exit, status_of
from trainbus.orchestrator.run import Orchestrator
from trainbus.trainer._evaluation import plain_metrics
from trainbus.trainer._run_info import run_config

try:
    from transformers import TrainerCallback as _HFCallback
    from transformers import TrainingArguments as _HFArguments
except ImportError as _missing:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "TrainbusCallback is a callback for transformers.Trainer and needs transformers: "
        "pip install transformers"
    ) from _missing

__all__ = ["TrainbusCallback"]

log = structlog.get_logger(__name__)

_CHECKPOINT_PREFIX = "checkpoint"
"""transformers names a checkpoint ``<output_dir>/checkpoint-<global_step>``."""
_FINAL_MODEL_DIR = "final_model"


class TrainbusCallback(_HFCallback):
    """A ``transformers.TrainerCallback`` that reports the training through a trainbus run.

    Args:
        report_to: the integrations to report to, as trainbus's registry resolves them
            (``"all"``, ``"none"``, a name or a list). ``None`` (default): the trainer's
            ``args.report_to``, whose integrations trainbus has a sink for are taken over from
            transformers (its callbacks for them are removed); any other stay with transformers.
        output_dir: where the run directory goes (``<output_dir>/trainbus/<run id>``); default the
            trainer's ``args.output_dir``.
        run_name: the run's name in the trackers; default ``args.run_name``, else the run id.
        sinks: sink objects of your own, beside the ``report_to`` ones.
        run_id: continue this trainbus run (default: ``$TRAINBUS_RUN_ID``, else a fresh id).
        flush_timeout: seconds the sinks get to deliver at the end of each call; what they have
            not delivered by then stays in the journal for ``trainbus sync``.
        sink_process: where the ``report_to`` sinks run (``Orchestrator``'s ``sink_process``).
            Unset (and ``TRAINBUS_SINK_PROCESS`` unset), every one runs in the sink process:
            transformers calls the hooks and steps the model on one thread, and a sink's Python
            in the training process takes GIL time from it (``bench_bridge``: 0.96 of no
            callback's step rate with MLflow in process, 1.02 in the sink process).
        env: the environment sinks are configured from (default ``os.environ``).
    """

    def __init__(
        self,
        report_to: str | Sequence[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        *,
        run_name: str | None = None,
        sinks: Sequence[Sink] = (),
        run_id: str | None = None,
        flush_timeout: float = 30.0,
        sink_process: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.report_to = report_to
        self.output_dir = output_dir
        self.run_name = run_name
        self.sinks = tuple(sinks)
        self.run_id = run_id
        """The trainbus run id, once the first call opened the run; later calls continue it."""
        self.flush_timeout = flush_timeout
        self.sink_process = sink_process
        self.env: Mapping[str, str] = os.environ if env is None else env
        self._names: list[str] | None = None
        """The integrations reported to, resolved (``_resolve``), once per callback."""
        self._run: BridgeRun | None = None
        self._in_train = False
        self._init_end_pending = False
        self._state: Any = None
        """The trainer's ``TrainerState``, as the last call that opened the run handed it."""
        self._staged: list[tuple[type[EventBase], float, int, float]] = []

    # --- the run ----------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path | None:
        """The run directory, once a call opened the run."""
        if self._run is None:
            return None
        return self._run.orchestrator.run_dir.path

    def _resolve(self, args: Any, *, late: bool = False) -> list[str]:
        """Check the arguments and resolve ``report_to`` (errors before training starts), and
        take transformers' callbacks for those integrations out of the calling trainer (``late``:
        after they may have started, when this callback was added after ``__init__``)."""
        if not isinstance(args, _HFArguments):
            raise ConfigurationError(
                "TrainbusCallback is a callback for transformers.Trainer, got arguments of type "
                f"{type(args).__name__}; trainbus.Trainer reports through its own report_to"
            )
        if self._names is None:
            self._names = _hf_takeover.taken_over(self.report_to, args.report_to or [], self.env)
        handler = _hf_takeover.calling_handler()
        if handler is None:
            if self._names:
                log.warning(
                    "bridge_cannot_remove_transformers_callbacks",
                    integrations=self._names,
                    hint="set report_to='none' on TrainingArguments and name the integrations "
                    "in TrainbusCallback(report_to=...), or they may be logged twice",
                )
            return self._names
        removed = _hf_takeover.remove_integration_callbacks(handler, self._names)
        if removed and late:
            log.warning(
                "bridge_took_over_late",
                removed=removed,
                reason="the callbacks had already started their own runs at on_train_begin",
                hint="pass TrainbusCallback in transformers.Trainer(callbacks=[...])",
            )
        elif removed:
            log.info("bridge_took_over", integrations=self._names, removed=removed)
        return self._names

    def _open(self, args: Any, state: Any, model: Any) -> BridgeRun:
        """Open the run for one trainer call and publish ``RunStarted`` (and a pending
        ``InitEnd``)."""
        names = self._resolve(args, late=self._names is None)
        orchestrator = Orchestrator(
            output_dir=self.output_dir if self.output_dir is not None else args.output_dir,
            run_name=self.run_name or args.run_name,
            report_to=names or "none",
            sinks=self.sinks,
            env=self.env,
            run_id=self.run_id,
            rank=args.process_index,
            world_size=args.world_size,
            flush_timeout=self.flush_timeout,
            sink_process=self._sink_process(),
        )
        run = BridgeRun(orchestrator)
        self._run, self.run_id, self._state = run, orchestrator.run_id, state
        close_at_exit(self)
        bus = run.bus
        bus.emit(
            RunStarted,
            global_step=state.global_step,
            epoch=float(state.epoch or 0.0),
            continued=bus.context.continued,
            **run_config(args, model, report_to=bus.context.report_to),
        )
        if self._init_end_pending:
            self._init_end_pending = False
            bus.emit(InitEnd)
        return run

    def _sink_process(self) -> bool | None:
        """The placement asked for, else the environment's, else the sink process."""
        if self.sink_process is not None or SINK_PROCESS_VARIABLE in self.env:
            return self.sink_process
        return True

    def _ensure(self, args: Any, state: Any, kwargs: Mapping[str, Any]) -> BridgeRun:
        """The open run, or a new call of it (``evaluate()``/``predict()`` outside training)."""
        run = self._run
        if run is None or run.closed:
            run = self._open(args, state, kwargs.get("model"))
        return run

    def _finish(
        self, state: Any, error: BaseException | None = None, *, stopped: bool = False
    ) -> None:
        run = self._run
        if run is None or run.closed:
            return
        self._flush_marks()
        self._in_train = False
        status = "stopped" if stopped and error is None else status_of(error)
        run.finish(status, step=state.global_step, epoch=float(state.epoch or 0.0), error=error)

    def close_open_run(self, error: BaseException | None) -> None:
        """Close a run the trainer left open (interpreter exit); ``error`` ended the program."""
        run = self._run
        if run is None or run.closed:
            return
        if error is None and self._in_train:
            error = SystemExit("the process exited during train(), before on_train_end")
        self._flush_marks()
        self._in_train = False
        state = self._state
        step, epoch = (0, 0.0) if state is None else (state.global_step, float(state.epoch or 0))
        run.finish(status_of(error), step=step, epoch=epoch, error=error)

    # --- publishing -------------------------------------------------------------------------

    def _emit(self, event_type: type[EventBase], state: Any, **fields: Any) -> None:
        run = self._run
        if run is None or run.closed:
            return
        self._flush_marks()
        run.bus.emit(
            event_type, global_step=state.global_step, epoch=float(state.epoch or 0.0), **fields
        )

    def _mark(self, event_type: type[EventBase], state: Any) -> None:
        """Stamp an envelope-only per-step event now; ``_flush_marks`` publishes it."""
        if self._run is not None:
            self._staged.append(
                (event_type, time.time(), state.global_step, float(state.epoch or 0.0))
            )

    def _flush_marks(self) -> None:
        staged = self._staged
        if staged:
            self._staged = []
            run = self._run
            if run is not None and not run.closed:
                run.bus.publish_marks(staged)

    # --- transformers' hooks ----------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Resolve ``report_to`` and remove transformers' callbacks for it, before training."""
        self._resolve(args)
        self._init_end_pending = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open (or continue) the run; a previous ``train()`` that raised is closed as failed."""
        if self._run is not None and not self._run.closed:
            was_training = self._in_train
            self._finish(
                state,
                RuntimeError("train() raised before on_train_end") if was_training else None,
            )
        self._in_train = True
        self._open(args, state, kwargs.get("model"))
        self._emit(
            TrainBegin,
            state,
            max_steps=state.max_steps,
            num_train_epochs=int(state.num_train_epochs or 0),
        )

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._emit(EpochBegin, state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._emit(EpochEnd, state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._emit(StepBegin, state)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._emit(SubstepEnd, state)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark(PreOptimizerStep, state)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark(OptimizerStep, state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark(StepEnd, state)
        self._flush_marks()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self._ensure(args, state, kwargs)
        self._emit(Log, state, logs=plain_metrics(logs or {}))
        last = self._in_train and 0 < state.max_steps <= state.global_step
        if last and self._run is not None and (control.should_evaluate or control.should_save):
            # The last step's log, and transformers evaluates or saves next: the sinks deliver
            # meanwhile (``Bus.begin_flush``), not after that work. Without final work the close
            # follows at once and sends the last events in one batch.
            self._run.bus.begin_flush()

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ensure(args, state, kwargs)
        self._emit(PredictionStep, state)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        """Publish ``Evaluate``; an ``evaluate()`` outside training ends its call here."""
        self._ensure(args, state, kwargs)
        self._emit(Evaluate, state, metrics=plain_metrics(metrics or {}))
        if not self._in_train:
            self._finish(state)

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        """Publish ``Predict``; ``predict()`` ends its call here."""
        self._ensure(args, state, kwargs)
        self._emit(Predict, state, metrics=plain_metrics(metrics or {}))
        if not self._in_train:
            self._finish(state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish ``Save`` and the checkpoint as an ``Artifact`` sinks may upload."""
        path = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        found = str(path) if path.is_dir() else None
        self._emit(Save, state, checkpoint_dir=found)
        if found is not None:
            self._emit(Artifact, state, kind="checkpoint", path=found, name=path.name)

    def on_push_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish ``PushBegin``; a push outside training is a call of its own."""
        self._ensure(args, state, kwargs)
        self._emit(PushBegin, state)
        if not self._in_train:
            self._finish(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish the final model (when a sink wants it) and ``TrainEnd``; close the run."""
        run = self._run
        if run is None or run.closed:
            return
        if run.bus.context.wants_final_model and args.should_save:
            run.bus.begin_flush()  # writing the model is slow: deliver meanwhile
            self._publish_final_model(args, state, kwargs)
        self._emit(TrainEnd, state)
        self._finish(state, stopped=state.global_step < state.max_steps)

    def _publish_final_model(self, args: Any, state: Any, kwargs: Mapping[str, Any]) -> None:
        """Write the model to ``<output_dir>/final_model`` as transformers' ``save_pretrained``
        does and publish it, for the sinks that upload it (as transformers' callbacks do in
        ``on_train_end``)."""
        model = kwargs.get("model")
        save = getattr(model, "save_pretrained", None)
        if not callable(save):
            log.warning("bridge_final_model_skipped", reason="the model has no save_pretrained")
            return
        target = Path(args.output_dir) / _FINAL_MODEL_DIR
        save(str(target))
        processing_class = kwargs.get("processing_class")
        save_processor = getattr(processing_class, "save_pretrained", None)
        if callable(save_processor):
            save_processor(str(target))
        self._emit(Artifact, state, kind="model", path=str(target), name=_FINAL_MODEL_DIR)
