"""The ``Trainer``'s reports and files: ``log``, the metrics table and files, state and model.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of, each a mixin holding one
idea of transformers' public API. This one is what a run leaves behind for people: log entries
(published as ``Log`` and handed to ``on_log``), the ``*_results.json`` files, the state and the
model as transformers writes them. The formats are ``trainbus.trainer._results``'s and
``trainbus.trainer._checkpoint``'s; the attributes and methods it uses from the ``Trainer`` are
declared here for the type checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from trainbus.bus._bus import Bus
from trainbus.bus._events import Artifact, EventBase, Log
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._collators import DataCollator
from trainbus.trainer._evaluation import plain_metrics, speed_metrics
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._results import metrics_table, save_results
from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["ReportingMixin"]


class ReportingMixin:
    """``log``, ``log_metrics``, ``save_metrics``, ``save_state`` and ``save_model``."""

    args: TrainingArguments
    model: nn.Module
    processing_class: Any
    data_collator: DataCollator
    state: TrainerState
    control: TrainerControl
    callback_handler: CallbackHandler
    _bus: Bus | None
    _initial_num_input_tokens_seen: int

    if TYPE_CHECKING:  # the Trainer's own: events and ranks

        def _flush_marks(self) -> None: ...
        def _publish(self, event_type: type[EventBase], **fields: Any) -> None: ...
        def is_world_process_zero(self) -> bool: ...
        def push_to_hub(
            self,
            commit_message: str | None = ...,
            blocking: bool = ...,
            token: str | None = ...,
            revision: str | None = ...,
            private: bool | None = ...,
            **kwargs: Any,
        ) -> Any: ...

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> Path:
        """Write the model so that ``from_pretrained(output_dir)`` loads it, as transformers does.

        A model with ``save_pretrained`` writes its config and safetensors weights through it
        (any other module: its ``state_dict`` as ``model.safetensors``); the ``processing_class``
        (else the data collator's tokenizer) is saved beside it, and the arguments as
        ``training_args.json`` (never a pickle: see ``trainbus.trainer._checkpoint``). Only the
        process that saves (``args.should_save``) writes. Inside a run (from a callback, say
        ``on_train_end``) it also publishes ``Artifact(kind="model")`` so sinks can upload it.
        After ``train()`` returned, the run and its sinks are closed, and only the files are
        written: the usual ``train()`` then ``save_model()`` script still gets its model
        uploaded, because a sink that uploads the final model (``WANDB_LOG_MODEL=end``,
        ``HF_DVCLIVE_LOG_MODEL``, ...) makes ``train()`` write it to
        ``<output_dir>/final_model`` and publish it at the end of training, as transformers'
        callbacks do in ``on_train_end`` (see ``trainbus.trainer._final_model``).

        With ``push_to_hub=True`` it then pushes (``push_to_hub(commit_message="Model save")``), as
        transformers does.

        Args:
            output_dir: where to write; ``args.output_dir`` when ``None``.
            _internal_call: transformers' flag for its own calls, which never push.

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
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
        return target
