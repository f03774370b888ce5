"""The ``Trainer``'s pushes: ``push_to_hub``, ``init_hf_repo``, ``create_model_card``, and the
push that follows a save under ``hub_strategy``.

One of the parts ``Trainer`` (``trainbus.trainer._trainer``) is made of. Where a push goes and how
it is timed is ``trainbus.trainer._push``'s; this module fires the hooks and publishes the events
in transformers' order: ``on_push_begin`` (and ``PushBegin``) before anything is written, on the
world's first process only.
"""

from __future__ import annotations

import concurrent.futures
import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from torch import nn

from trainbus.bus._bus import Bus
from trainbus.bus._events import Artifact, EventBase, PushBegin
from trainbus.bus._sink import Sink
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._collators import DataCollator
from trainbus.trainer._handler import CallbackHandler
from trainbus.trainer._model_card import render_model_card
from trainbus.trainer._push import (
    LAST_CHECKPOINT,
    MODEL_CARD,
    PushDestination,
    Pusher,
    PushResult,
    check_destination,
    check_registry_sink,
    hub_token,
    place_in_directory,
    resolve_destination,
    snapshot,
    staging_name,
)
from trainbus.trainer._state import TrainerControl, TrainerState

__all__ = ["PushMixin"]

logger = structlog.get_logger(__name__)

T = TypeVar("T")

_HUB_IGNORED: Final = ["_*", ".*", f"{ckpt.PREFIX}-*", "trainbus/*", f"{ckpt.FINAL_MODEL_DIR}/*"]
"""What an end-of-training Hub push leaves out of ``output_dir``: transformers' own patterns,
hidden staging folders, the run directories and the final model trainbus writes for sinks."""


class PushMixin:
    """``push_to_hub``, ``init_hf_repo``, ``create_model_card`` and pushes at saves."""

    args: TrainingArguments
    model: nn.Module
    processing_class: Any
    data_collator: DataCollator
    state: TrainerState
    control: TrainerControl
    callback_handler: CallbackHandler
    sinks: list[Sink]
    _bus: Bus | None
    hub_model_id: str | None
    """The destination as ``hub_model_id`` spells it, once checked (transformers: the repo id)."""
    _pusher: Pusher | None

    if TYPE_CHECKING:  # the Trainer's own: events, ranks and runs

        def _publish(self, event_type: type[EventBase], **fields: Any) -> None: ...
        def _run_blocking(self, body: Callable[[], T], launcher: Any = None) -> T: ...
        def is_world_process_zero(self) -> bool: ...

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Check the push destination (``hub_model_id``) and prepare it.

        A directory is created; on the Hugging Face Hub the repository is created when missing
        (``private`` defaults to ``args.hub_private_repo``), as transformers does. Only on the
        world's first process.

        Args:
            token: a Hub token with write access; ``args.hub_token`` when ``None``.
            private: whether a new Hub repository is private.
        """
        pusher = self._push_destination(token)
        if not self.is_world_process_zero():
            return
        destination = pusher.destination
        if destination.kind == "directory":
            Path(destination.target).mkdir(parents=True, exist_ok=True)
        elif destination.kind == "hub":
            from huggingface_hub import HfApi

            private = private if private is not None else self.args.hub_private_repo
            token = hub_token(token if token is not None else self.args.hub_token)
            url = HfApi(token=token).create_repo(destination.target, private=private, exist_ok=True)
            pusher.destination = PushDestination("hub", url.repo_id)
            self.hub_model_id = url.repo_id

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        commit_message: str = "End of training",
    ) -> None:
        """Write a model card as ``<output_dir>/README.md``, on the world's first process.

        The keyword arguments are transformers' and go into the card's metadata header;
        ``model_name`` defaults to the name of ``output_dir``. See
        ``trainbus.trainer._model_card``.
        """
        if not self.is_world_process_zero():
            return
        card = self._model_card(
            model_name or Path(self.args.output_dir).name,
            commit_message,
            language=language,
            license=license,
            tags=tags,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            datasets=dataset,
            dataset_args=dataset_args,
        )
        target = Path(self.args.output_dir)
        target.mkdir(parents=True, exist_ok=True)
        (target / MODEL_CARD).write_text(card, encoding="utf-8")

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> PushResult | concurrent.futures.Future[PushResult] | None:
        """Push the model, its processing class and a model card to ``hub_model_id``.

        Fires ``on_push_begin`` (and publishes ``PushBegin``), waits for a push still running
        from training, then pushes as the destination does (``trainbus.trainer._push``): a
        directory replaced at once, a new version in the MLflow model registry (registered by the
        run's MLflow sink before this call returns, within its flush deadline), or a commit on
        the Hugging Face Hub. Callable with ``push_to_hub=False`` in the arguments, as in
        transformers. After ``train()`` it continues the trainer's run, as ``evaluate()`` does.

        Args:
            commit_message: the push's message (the model card's first line; the Hub commit).
            blocking: wait for the push to finish; ``False`` returns a future instead (the MLflow
                registry's is done when this returns: the sink holds the rest).
            token: a Hub token to use instead of ``args.hub_token``.
            revision: the Hub branch to push to; ``args.hub_revision`` when ``None``.
            private: whether a new Hub repository is private.
            kwargs: ``create_model_card``'s arguments (``model_name``, ``tags``, ...).

        Returns:
            What the push left (`PushResult`), a future of it when not ``blocking``, or ``None``
            on processes other than the world's first.
        """
        pusher = self._push_destination(token)
        body = functools.partial(
            self._push_final,
            pusher,
            commit_message or "End of training",
            blocking,
            token,
            revision if revision is not None else self.args.hub_revision,
            private,
            kwargs,
        )
        return self._run_blocking(body)

    # --- internals ----------------------------------------------------------------------------

    def _push_destination(self, token: str | None = None) -> Pusher:
        """The checked destination and its pusher, made once (the first check raises)."""
        if self._pusher is None:
            args = self.args
            destination = resolve_destination(args.hub_model_id, args.output_dir)
            check_destination(
                destination, args.output_dir, token=token if token else args.hub_token
            )
            self._pusher = Pusher(destination)
            self.hub_model_id = destination.uri
        return self._pusher

    def _check_push_sink(self) -> None:
        """Before training: a registry destination needs a sink that registers (one line)."""
        if not self.args.push_to_hub or self._bus is None:
            return
        destination = self._push_destination().destination
        check_registry_sink(
            destination, self._bus.context.report_to, (sink.name for sink in self.sinks)
        )

    def _finish_current_push(self) -> None:
        """Wait for a push started at a save (the end of ``train()``, as transformers)."""
        if self._pusher is not None:
            self._pusher.wait()

    def _begin_push(self, destination: PushDestination) -> None:
        self._publish(PushBegin, destination=destination.uri)
        self.control = self.callback_handler.on_push_begin(self.args, self.state, self.control)

    def _model_card(self, model_name: str, commit_message: str, **metadata: Any) -> str:
        state = self.state
        return render_model_card(
            model_name,
            commit_message=commit_message,
            global_step=state.global_step,
            epoch=state.epoch,
            arguments=self.args.to_dict(),
            log_history=state.log_history,
            metadata=metadata,
        )

    def _push_from_checkpoint(self, checkpoint: Path) -> None:
        """At a save, under ``hub_strategy`` other than ``"end"``: push the checkpoint's model.

        Called by the training loop on a process that saves, once the checkpoint is written
        and before rotation. The training thread only fires the hook, links the checkpoint into
        a snapshot and queues the push (``trainbus.trainer._push``).
        """
        args = self.args
        if not args.push_to_hub or args.hub_strategy == "end" or not self.is_world_process_zero():
            return
        pusher = self._push_destination()
        destination = pusher.destination
        if destination.kind != "mlflow" and not args.hub_always_push and pusher.busy():
            logger.info(
                "push skipped: the previous push is still running", checkpoint=str(checkpoint)
            )
            return
        self._begin_push(destination)
        state = self.state
        if args.save_strategy == "steps":
            message = f"Training in progress, step {state.global_step}"
        else:
            message = f"Training in progress, epoch {int(state.epoch or 0)}"
        if destination.kind == "mlflow":
            self._publish(
                Artifact,
                kind="directory",
                path=str(checkpoint),
                name=checkpoint.name,
                register_as=destination.target,
            )
            return
        folder = {"checkpoint": LAST_CHECKPOINT, "all_checkpoints": checkpoint.name}.get(
            args.hub_strategy
        )
        staged = snapshot(checkpoint, Path(args.output_dir) / staging_name(state.global_step))
        card = self._model_card(_model_name(destination), message)
        if destination.kind == "directory":
            pusher.submit(
                functools.partial(_place_and_clean, destination, staged, card, message, folder)
            )
        else:
            pusher.submit(
                functools.partial(
                    _upload_to_hub,
                    destination,
                    staged,
                    message,
                    args.hub_token,
                    args.hub_revision,
                    folder,
                    cleanup=True,
                )
            )

    def _push_final(
        self,
        pusher: Pusher,
        commit_message: str,
        blocking: bool,
        token: str | None,
        revision: str | None,
        private: bool | None,
        card_arguments: dict[str, Any],
    ) -> PushResult | concurrent.futures.Future[PushResult] | None:
        """``push_to_hub``'s work, inside a run of the trainer."""
        destination = pusher.destination
        if destination.kind == "mlflow" and self._bus is not None:
            check_registry_sink(
                destination, self._bus.context.report_to, (sink.name for sink in self.sinks)
            )
        self._begin_push(destination)
        if not self.is_world_process_zero():
            return None
        pusher.wait()  # a push started at a save finishes first, as in transformers
        model_name = card_arguments.pop("model_name", None) or _model_name(destination)
        card = self._model_card(model_name, commit_message, **card_arguments)
        output_dir = Path(self.args.output_dir)
        if destination.kind == "mlflow":
            return self._register_in_mlflow(destination, commit_message, card, blocking)
        if destination.kind == "hub":
            self.init_hf_repo(token=token, private=private)
            ckpt.save_model(
                output_dir,
                self.model,
                self.args.to_dict(),
                self.processing_class,
                self.data_collator,
            )
            (output_dir / MODEL_CARD).write_text(card, encoding="utf-8")
            work = functools.partial(
                _upload_to_hub,
                pusher.destination,
                output_dir,
                commit_message,
                token if token is not None else self.args.hub_token,
                revision,
                None,
                cleanup=False,
            )
        else:
            staged = output_dir / staging_name("final")
            shutil.rmtree(staged, ignore_errors=True)
            ckpt.save_model(
                staged,
                self.model,
                self.args.to_dict(),
                self.processing_class,
                self.data_collator,
            )
            work = functools.partial(
                _place_and_clean, destination, staged, card, commit_message, None
            )
        future = pusher.submit(work)
        return future.result() if blocking else future

    def _register_in_mlflow(
        self, destination: PushDestination, commit_message: str, card: str, blocking: bool
    ) -> PushResult | concurrent.futures.Future[PushResult]:
        """Write the model where the run's MLflow sink reads it and ask it to register it."""
        args = self.args
        target = Path(args.output_dir) / ckpt.FINAL_MODEL_DIR

        def fill(staging: Path) -> None:
            ckpt.save_model(
                staging, self.model, args.to_dict(), self.processing_class, self.data_collator
            )
            (staging / MODEL_CARD).write_text(card, encoding="utf-8")

        ckpt.write_directory(target, fill)
        # One artifact folder per step: a later push never rewrites the files of a version.
        self._publish(
            Artifact,
            kind="directory",
            path=str(target),
            name=f"model-{self.state.global_step}",
            register_as=destination.target,
        )
        result = PushResult(destination, commit_message, destination.uri)
        if blocking:
            return result
        done: concurrent.futures.Future[PushResult] = concurrent.futures.Future()
        done.set_result(result)
        return done


def _model_name(destination: PushDestination) -> str:
    return (
        Path(destination.target).name
        if destination.kind == "directory"
        else (destination.target.rsplit("/", 1)[-1])
    )


def _place_and_clean(
    destination: PushDestination,
    staged: Path,
    card: str,
    message: str,
    folder: str | None,
) -> PushResult:
    """On the push thread: place a snapshot in a directory destination, then drop it."""
    try:
        target = place_in_directory(
            Path(destination.target),
            staged,
            card=card,
            checkpoint=staged if folder else None,
            checkpoint_name=folder,
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    logger.info("pushed", destination=str(destination), message=message)
    return PushResult(destination, message, str(target))


def _upload_to_hub(
    destination: PushDestination,
    folder_path: Path,
    message: str,
    token: str | None,
    revision: str | None,
    checkpoint_folder: str | None,
    *,
    cleanup: bool,
) -> PushResult:
    """On the push thread: commit a folder (and a checkpoint folder) to the Hub repository."""
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token(token))
    try:
        api.create_repo(destination.target, exist_ok=True)
        info = api.upload_folder(
            repo_id=destination.target,
            folder_path=str(folder_path),
            commit_message=message,
            revision=revision,
            ignore_patterns=[*_HUB_IGNORED, *_TRAINING_FILES],
        )
        if checkpoint_folder is not None:
            api.upload_folder(
                repo_id=destination.target,
                folder_path=str(folder_path),
                path_in_repo=checkpoint_folder,
                commit_message=f"{message}, checkpoint",
                revision=revision,
            )
    finally:
        if cleanup:
            shutil.rmtree(folder_path, ignore_errors=True)
    return PushResult(destination, message, str(getattr(info, "commit_url", destination.uri)))


_TRAINING_FILES: Final = [
    ckpt.OPTIMIZER_NAME,
    ckpt.SCHEDULER_NAME,
    ckpt.STATE_NAME,
    "scaler.pt",
    "rng_state*.pth",
]
"""Training state in a checkpoint: not the model, so not in the repository's top level."""
