"""Every event a trainbus run can carry, as one tagged union of frozen msgspec Structs.

The training loop, with each event at the line where it fires (the Hugging Face callback points)::

    RunStarted(config, hparams, continued, trial)     # the run's identity card, every call
    InitEnd                                           # end of Trainer.__init__
    TrainBegin
    for epoch in epochs:
        EpochBegin
        for update_step in epoch:
            StepBegin                                 # first micro-batch of the window
            for micro_batch in window[:-1]:
                forward; backward; SubstepEnd
            forward; backward (last micro-batch); clip
            PreOptimizerStep; optimizer.step(); OptimizerStep
            scheduler.step(); zero_grad; global_step += 1
            StepEnd
            [Log(logs)] [PredictionStep * N, Log(eval logs), Evaluate(metrics)] [Save, Artifact]
        EpochEnd
        [Log] [PredictionStep * N, Log, Evaluate] [Save, Artifact]
    Log(summary); [load best model]
    [Artifact(kind="model")]                          # the final model, when a sink wants it
    TrainEnd
    RunFinished(status)                               # completed / stopped / failed / killed

    only when a sink asks for them (``Sink.wants_histograms``), every ``max(100, logging_steps)``
    optimizer steps: Histograms("gradients") after the backward passes, before clipping;
    Histograms("parameters") after optimizer.step()

    evaluate():     RunStarted(continued), PredictionStep * N, Log, Evaluate, RunFinished
    predict():      RunStarted(continued), PredictionStep * N, Predict(metrics), RunFinished
    push_to_hub():  RunStarted(continued), PushBegin, [Artifact(register_as)], RunFinished
    a save under hub_strategy other than "end": PushBegin [Artifact(register_as)] before Save

Every event carries the same envelope: ``run_id``, ``seq`` (per-run, strictly increasing, assigned
at publish time), ``global_step``, ``epoch``, ``time`` (Unix wall time, seconds) and ``rank``
(global rank of the publishing process). Events hold plain data only: live objects (model,
optimizer, data loaders) reach control callbacks as keyword arguments and never enter the journal.

Schema evolution (the journal outlives the code that wrote it):

* Tags never change and are never reused. A tag is the snake_case hook name without ``on_``
  (``StepEnd`` -> ``"step_end"`` -> ``on_step_end``).
* A new field always gets a default, so old journals still decode.
* A field is never removed or retyped; deprecate it and add a new one instead.
* A new event type gets a new tag; old readers reject it with a clear error instead of guessing.

Non-finite floats survive msgpack (the journal's encoding) unchanged; JSON has no spelling for
them, so ``encode_json`` writes them as ``null``.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec

__all__ = [
    "ALL_EVENT_TYPES",
    "HF_EVENT_TYPES",
    "MODEL_EVENT_TYPES",
    "RUN_EVENT_TYPES",
    "Artifact",
    "ArtifactKind",
    "EpochBegin",
    "EpochEnd",
    "Evaluate",
    "Event",
    "EventBase",
    "HistogramSource",
    "Histograms",
    "InitEnd",
    "Log",
    "MetricValue",
    "OptimizerStep",
    "PreOptimizerStep",
    "Predict",
    "PredictionStep",
    "PushBegin",
    "RunFinished",
    "RunStarted",
    "RunStatus",
    "Save",
    "StepBegin",
    "StepEnd",
    "SubstepEnd",
    "TrainBegin",
    "TensorHistogram",
    "TrainEnd",
    "TrialInfo",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "hook_name",
]

MetricValue: TypeAlias = bool | int | float | str | None
"""What a logged value may be. Sinks that only take numbers skip the rest."""

RunStatus: TypeAlias = Literal["completed", "stopped", "failed", "killed"]
ArtifactKind: TypeAlias = Literal["checkpoint", "model", "file", "directory"]
HistogramSource: TypeAlias = Literal["gradients", "parameters"]


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope every event shares."""

    run_id: str
    seq: int
    time: float
    global_step: int = 0
    epoch: float = 0.0
    rank: int = 0


# --- Hugging Face callback events -------------------------------------------------------------


class InitEnd(EventBase, frozen=True, kw_only=True, tag="init_end"):
    """End of ``Trainer.__init__``."""


class TrainBegin(EventBase, frozen=True, kw_only=True, tag="train_begin"):
    """Start of training, after model, optimizer and scheduler are ready."""

    max_steps: int = 0
    num_train_epochs: int = 0


class TrainEnd(EventBase, frozen=True, kw_only=True, tag="train_end"):
    """End of training, after the summary log and loading the best model."""


class EpochBegin(EventBase, frozen=True, kw_only=True, tag="epoch_begin"):
    """Start of an epoch."""


class EpochEnd(EventBase, frozen=True, kw_only=True, tag="epoch_end"):
    """End of an epoch, also when it was cut short by a stop flag or ``max_steps``."""


class StepBegin(EventBase, frozen=True, kw_only=True, tag="step_begin"):
    """First micro-batch of an optimizer step, before its forward pass."""


class SubstepEnd(EventBase, frozen=True, kw_only=True, tag="substep_end"):
    """After a micro-batch that is not the last of its accumulation window."""


class PreOptimizerStep(EventBase, frozen=True, kw_only=True, tag="pre_optimizer_step"):
    """After clipping, right before ``optimizer.step()``."""


class OptimizerStep(EventBase, frozen=True, kw_only=True, tag="optimizer_step"):
    """Right after ``optimizer.step()``, before the scheduler steps and gradients are zeroed."""


class StepEnd(EventBase, frozen=True, kw_only=True, tag="step_end"):
    """After ``global_step`` was incremented."""


class Log(EventBase, frozen=True, kw_only=True, tag="log"):
    """A log entry, exactly what ``on_log`` receives (``epoch`` included, ``step`` not)."""

    logs: dict[str, MetricValue] = {}


class Evaluate(EventBase, frozen=True, kw_only=True, tag="evaluate"):
    """End of an evaluation; ``metrics`` carry their ``eval_`` prefix."""

    metrics: dict[str, MetricValue] = {}


class Predict(EventBase, frozen=True, kw_only=True, tag="predict"):
    """End of ``predict()``; ``metrics`` carry their ``test_`` prefix."""

    metrics: dict[str, MetricValue] = {}


class PredictionStep(EventBase, frozen=True, kw_only=True, tag="prediction_step"):
    """After one evaluation or prediction batch."""


class Save(EventBase, frozen=True, kw_only=True, tag="save"):
    """A checkpoint was fully written (files, ``trainer_state.json``, rotation)."""

    checkpoint_dir: str | None = None


class PushBegin(EventBase, frozen=True, kw_only=True, tag="push_begin"):
    """Start of a push to a model hub (``push_to_hub``, or a save under ``hub_strategy``).

    ``destination`` names where the model goes (``hub_model_id`` as given, or the Hub repo id it
    defaults to); empty in journals written before the field existed.
    """

    destination: str = ""


# --- Run-level events -------------------------------------------------------------------------


class TrialInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Which trial of which hyper-parameter search a run is, so trackers can group the trials.

    A search runs each trial as a run of its own (its own run id, run directory and journal);
    this card is what ties the runs together: the MLflow sink nests each trial's run under one
    parent run per ``search_id``, W&B groups them under ``search``, and TensorBoard writes one
    directory per ``name``.
    """

    search: str
    """The search's name, shared by its trials (the W&B group, the MLflow parent run's name)."""
    search_id: str
    """Unique per search: the key trackers find the search's parent run by."""
    number: int
    """The trial's number in the search, from 0 (Optuna's ``trial.number``)."""
    name: str
    """The trial's name: ``hp_name(trial)`` when given, else ``run-<number>`` (its directory)."""
    params: dict[str, Any] = {}
    """The hyper-parameters the trial tries, as ``TrainerState.trial_params`` holds them."""


class RunStarted(EventBase, frozen=True, kw_only=True, tag="run_started"):
    """The run's identity card: arguments (secrets removed) and model hyper-parameters.

    Published at the start of every trainer call on the run's bus. The first one (``continued``
    false) starts the run; a later call of the same run (``evaluate()`` or ``predict()`` after
    ``train()``, which reopen the sinks) publishes it again with ``continued`` true: a sink then
    goes on logging into the tracker run it already has, and sends neither the parameters nor a
    start time again.
    """

    run_name: str = ""
    output_dir: str = ""
    world_size: int = 1
    config: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    continued: bool = False
    trial: TrialInfo | None = None
    """The hyper-parameter search trial this run is, if any (``Trainer.hyperparameter_search``)."""


class Artifact(EventBase, frozen=True, kw_only=True, tag="artifact"):
    """A file or directory a sink may upload (a checkpoint, the final model, ...)."""

    path: str
    kind: ArtifactKind = "file"
    name: str = ""
    register_as: str = ""
    """A model registry name (``hub_model_id="models:/<name>"``): a sink with a registry
    uploads the files as ``name`` and registers them as a new version of this model."""


class RunFinished(EventBase, frozen=True, kw_only=True, tag="run_finished"):
    """The run ended; ``error`` says why when ``status`` is ``failed``."""

    status: RunStatus = "completed"
    error: str | None = None


class TensorHistogram(msgspec.Struct, frozen=True, kw_only=True):
    """How one tensor's finite values spread: ``counts`` in equal bins from ``low`` to ``high``
    (as ``torch.histc`` counts them), or one bin holding every value when ``low == high``."""

    low: float
    high: float
    counts: list[int] = []


class Histograms(EventBase, frozen=True, kw_only=True, tag="histograms"):
    """The model's gradients or parameters as histograms, one per named parameter (the names
    ``named_parameters()`` gives). Published only when a sink asks for them (W&B's
    ``WANDB_WATCH``), so a run that does not pay nothing for them."""

    source: HistogramSource
    histograms: dict[str, TensorHistogram] = {}


Event: TypeAlias = (
    InitEnd
    | TrainBegin
    | TrainEnd
    | EpochBegin
    | EpochEnd
    | StepBegin
    | SubstepEnd
    | PreOptimizerStep
    | OptimizerStep
    | StepEnd
    | Log
    | Evaluate
    | Predict
    | PredictionStep
    | Save
    | PushBegin
    | RunStarted
    | Artifact
    | RunFinished
    | Histograms
)

HF_EVENT_TYPES: Final[tuple[type[EventBase], ...]] = (
    InitEnd,
    TrainBegin,
    TrainEnd,
    EpochBegin,
    EpochEnd,
    StepBegin,
    SubstepEnd,
    PreOptimizerStep,
    OptimizerStep,
    StepEnd,
    Log,
    Evaluate,
    Predict,
    PredictionStep,
    Save,
    PushBegin,
)
"""The sixteen Hugging Face callback events, each with an ``on_<tag>`` hook on TrainerCallback."""

RUN_EVENT_TYPES: Final[tuple[type[EventBase], ...]] = (RunStarted, Artifact, RunFinished)
MODEL_EVENT_TYPES: Final[tuple[type[EventBase], ...]] = (Histograms,)
"""Per-step events about the model's tensors, published only for a sink that asks for them."""
ALL_EVENT_TYPES: Final[tuple[type[EventBase], ...]] = (
    HF_EVENT_TYPES + RUN_EVENT_TYPES + MODEL_EVENT_TYPES
)


def hook_name(event_type: type[EventBase]) -> str:
    """The callback method an event type maps to: ``StepEnd`` -> ``"on_step_end"``."""
    tag = event_type.__struct_config__.tag
    return f"on_{tag}"


_msgpack_encoder: Final = msgspec.msgpack.Encoder()
_msgpack_decoder: Final = msgspec.msgpack.Decoder(Event)
_json_encoder: Final = msgspec.json.Encoder()
_json_decoder: Final = msgspec.json.Decoder(Event)


def encode_msgpack(event: Event) -> bytes:
    """Encode one event as msgpack (the journal's record payload)."""
    return _msgpack_encoder.encode(event)


def decode_msgpack(data: bytes | memoryview) -> Event:
    """Decode and validate one msgpack-encoded event; raises ``msgspec.ValidationError``."""
    return _msgpack_decoder.decode(data)


def encode_json(event: Event) -> bytes:
    """Encode one event as JSON (non-finite floats become ``null``)."""
    return _json_encoder.encode(event)


def decode_json(data: bytes | str) -> Event:
    """Decode and validate one JSON-encoded event; raises ``msgspec.ValidationError``."""
    return _json_decoder.decode(data)
