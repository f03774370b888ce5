"""Where ``push_to_hub`` sends the model, and how a push gets there without holding up training.

transformers pushes to the Hugging Face Hub only. trainbus reads ``hub_model_id`` as a
destination, so that the same scripts push where companies and offline machines keep models:

================================================  ==============================================
``hub_model_id``                                  destination
================================================  ==============================================
``"file:///models/digits"``, ``"/models/digits"``  a directory (``~`` expanded), laid out as the
                                                  Hub repository would be after the same pushes
``"models:/digits"``                              the MLflow model registry of the run's tracking
                                                  server: each push a new version of ``digits``
``"owner/name"``, ``"name"``, unset               the Hugging Face Hub, as in transformers (needs
                                                  ``huggingface_hub`` and a token)
================================================  ==============================================

A directory destination holds what the Hub repository would::

    config.json, model.safetensors, tokenizer files, training_args.json   the model, latest push
    README.md                 a model card
    last-checkpoint/          hub_strategy="checkpoint": the latest checkpoint, whole
    checkpoint-<step>/        hub_strategy="all_checkpoints": every checkpoint pushed

Each push replaces the directory at once (a hidden sibling renamed into place, as checkpoints
are written), carrying over the checkpoint folders of earlier pushes (hard links where the file
system allows, else copies), as a Hub repository keeps the files a commit does not touch. A
reader never sees half a push.

When (``hub_strategy``, as transformers): ``"every_save"``, ``"checkpoint"`` and
``"all_checkpoints"`` push at each save, on the world's first process, once the checkpoint is
written and before old ones are rotated away: ``on_push_begin`` fires, the checkpoint is linked
into a snapshot on the training thread (milliseconds), and one background thread places it
(`Pusher`). A save that comes while the previous push is still running is not pushed, unless
``hub_always_push``. ``train()`` waits for the last push after ``on_train_end``. ``"end"`` pushes
nothing during training; ``push_to_hub()`` (and ``save_model()`` with ``push_to_hub=True``)
push the final model, as in transformers.

The MLflow registry is reached through the run's MLflow sink, not from here: the trainer
publishes the model's directory as ``Artifact(kind="directory", register_as=<name>)`` and the
sink uploads it to the run's artifacts and creates the model version whose source they are. The
tracking server, its credentials and the MLflow run id are the sink's; the trainer never imports
sinks; and so the registration is journaled, retried, never on the training thread, and
finished by ``trainbus sync`` after a crash. The kind is ``"directory"``, not ``"model"``, so
the sinks that upload the final model (``WANDB_LOG_MODEL=end`` ...) do not upload each push too.

Every destination is checked when the ``Trainer`` is built (an MLflow one again when the run
opens, for its sink), with one line naming ``hub_model_id`` and what was expected.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

import structlog

from trainbus.bus._env import env_flag
from trainbus.bus._errors import ConfigurationError
from trainbus.trainer import _checkpoint as ckpt

__all__ = [
    "HUB_INSTALL_HINT",
    "LAST_CHECKPOINT",
    "MODEL_CARD",
    "REGISTRY_SINKS",
    "DestinationKind",
    "PushDestination",
    "PushResult",
    "Pusher",
    "check_destination",
    "check_registry_sink",
    "hub_token",
    "place_in_directory",
    "resolve_destination",
    "snapshot",
    "staging_name",
]

logger = structlog.get_logger(__name__)

HUB_INSTALL_HINT: Final = "pip install 'trainbus[hub]'"
LAST_CHECKPOINT: Final = "last-checkpoint"
"""Where ``hub_strategy="checkpoint"`` keeps the latest checkpoint (transformers' name)."""
MODEL_CARD: Final = "README.md"
REGISTRY_SINKS: Final = ("mlflow", "dagshub")
"""Sinks (by name) that register ``Artifact(register_as=...)`` in an MLflow model registry."""
_TRAINING_STATE: Final = re.compile(
    rf"^({re.escape(ckpt.OPTIMIZER_NAME)}|{re.escape(ckpt.SCHEDULER_NAME)}|"
    rf"{re.escape(ckpt.STATE_NAME)}|scaler\.pt|rng_state(_\d+)?\.pth)$"
)
"""Checkpoint files that are training state, not the model: not copied to the model's place."""
_CHECKPOINT_FOLDER: Final = re.compile(rf"^({LAST_CHECKPOINT}|{ckpt.PREFIX}-\d+)$")
_REPO_ID: Final = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_EXPECTED: Final = (
    "expected 'file:///<dir>', an absolute directory, 'models:/<registered model name>' or a "
    "Hugging Face Hub repo id 'owner/name'"
)

DestinationKind = Literal["directory", "mlflow", "hub"]


@dataclasses.dataclass(frozen=True)
class PushDestination:
    """Where pushes go.

    Args:
        kind: ``"directory"``, ``"mlflow"`` (a model registry) or ``"hub"``.
        target: the absolute directory, the registered model's name, or the Hub repo id.
    """

    kind: DestinationKind
    target: str

    def __str__(self) -> str:
        if self.kind == "directory":
            return f"directory {self.target}"
        if self.kind == "mlflow":
            return f"MLflow registered model {self.target!r}"
        return f"Hugging Face Hub repo {self.target!r}"

    @property
    def uri(self) -> str:
        """The destination as ``hub_model_id`` spells it (published in ``PushBegin``)."""
        if self.kind == "directory":
            return Path(self.target).as_uri()
        return f"models:/{self.target}" if self.kind == "mlflow" else self.target


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a finished push left, returned by ``Trainer.push_to_hub``.

    Args:
        destination: where it went.
        commit_message: the push's message (in the model card, and the Hub commit).
        location: the directory written, or the registered model's ``models:/`` URI, or the
            Hub commit's URL.
    """

    destination: PushDestination
    commit_message: str
    location: str


def resolve_destination(hub_model_id: str | None, output_dir: str) -> PushDestination:
    """The destination ``hub_model_id`` names (see the module docstring); unset means the Hub
    repo named after ``output_dir``, as in transformers.

    Raises:
        ConfigurationError: one line naming ``hub_model_id`` and what it should look like.
    """
    if hub_model_id is None:
        return PushDestination("hub", Path(output_dir).absolute().name)
    text = hub_model_id.strip()
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(
                f"hub_model_id={hub_model_id!r} is not a local file URI; expected "
                "'file:///<absolute directory>'."
            )
        return PushDestination("directory", str(Path(unquote(parts.path)).absolute()))
    if text.startswith("models:"):
        name = text[len("models:") :]
        if not name.startswith("/") or not name.strip("/") or "/" in name[1:]:
            raise ConfigurationError(
                f"hub_model_id={hub_model_id!r} does not name one registered model; expected "
                "'models:/<name>' (each push adds a version: the registry numbers them)."
            )
        return PushDestination("mlflow", name[1:])
    if text.startswith(("/", "~")):
        return PushDestination("directory", str(Path(text).expanduser().absolute()))
    if "://" in text or not _REPO_ID.match(text):
        raise ConfigurationError(
            f"hub_model_id={hub_model_id!r} is no destination trainbus can push to; {_EXPECTED}."
        )
    return PushDestination("hub", text)


def check_destination(
    destination: PushDestination,
    output_dir: str,
    *,
    token: str | None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Refuse a destination that cannot work, before training: one line naming the problem.

    A directory must not be ``output_dir``, inside it or around it (each push replaces the
    directory), and its nearest existing parent must be writable. The Hub needs
    ``huggingface_hub``, no ``HF_HUB_OFFLINE``, and a token (``token``, else the one
    ``huggingface_hub`` finds: ``HF_TOKEN`` or ``hf auth login``). The MLflow registry's sink is
    checked when the run opens (`check_registry_sink`).
    """
    env = os.environ if env is None else env
    if destination.kind == "directory":
        _check_directory(Path(destination.target), Path(output_dir))
    elif destination.kind == "hub":
        if importlib.util.find_spec("huggingface_hub") is None:
            raise ConfigurationError(
                f"hub_model_id={destination.target!r} pushes to the Hugging Face Hub, which needs "
                f"huggingface_hub: {HUB_INSTALL_HINT} (or push to 'file:///<dir>' or "
                "'models:/<name>')."
            )
        if env_flag(env, "HF_HUB_OFFLINE"):
            raise ConfigurationError(
                f"hub_model_id={destination.target!r} pushes to the Hugging Face Hub but "
                "HF_HUB_OFFLINE is set; unset it, or push to 'file:///<dir>' or 'models:/<name>'."
            )
        if hub_token(token) is None:
            raise ConfigurationError(
                f"hub_model_id={destination.target!r} pushes to the Hugging Face Hub and no token "
                "was found; set hub_token or HF_TOKEN, or run `hf auth login`."
            )


def _check_directory(target: Path, output_dir: Path) -> None:
    target, output_dir = target.resolve(), output_dir.absolute().resolve()
    if target == output_dir or output_dir in target.parents or target in output_dir.parents:
        raise ConfigurationError(
            f"hub_model_id names the directory {str(target)!r}, which overlaps output_dir "
            f"{str(output_dir)!r}; each push replaces the destination, so it must lie outside."
        )
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"hub_model_id names the directory {str(target)!r}, which cannot be created: "
            f"{str(existing)!r} is not a writable directory."
        )


def check_registry_sink(
    destination: PushDestination, report_to: Iterable[str] | None, sink_names: Iterable[str]
) -> None:
    """Refuse an MLflow registry destination when no sink of the run can register the model.

    Args:
        destination: the push destination (nothing is checked unless it is ``"mlflow"``).
        report_to: the integrations the run started (``RunContext.report_to``).
        sink_names: the names of the user's own sinks for the run.
    """
    if destination.kind != "mlflow":
        return
    names = {*(report_to or ()), *sink_names}
    if not names.intersection(REGISTRY_SINKS):
        raise ConfigurationError(
            f"hub_model_id='models:/{destination.target}' registers the model through the run's "
            "MLflow integration, which this run does not report to; add 'mlflow' to report_to "
            "(with MLFLOW_TRACKING_URI) or push to 'file:///<dir>'."
        )


def hub_token(token: str | None) -> str | None:
    """``token``, else the one ``huggingface_hub`` finds (``HF_TOKEN``, the login file)."""
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    found: str | None = get_token()
    return found


# --- files ------------------------------------------------------------------------------------


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link ``source`` to ``target`` (no copy, no time), else copy it with its metadata.

    Checkpoint and push files are written once and never modified in place (a new save renames
    a new directory into place), so sharing their inodes is safe.
    """
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, copy_function=_link_or_copy)


def snapshot(checkpoint: Path, staging: Path) -> Path:
    """Link ``checkpoint`` into ``staging`` (a hidden directory beside it) and return it.

    Runs on the training thread at a save: links cost microseconds per file, and the snapshot
    outlives the rotation that may delete the checkpoint before the push has placed it.
    """
    shutil.rmtree(staging, ignore_errors=True)
    _copy_tree(checkpoint, staging)
    return staging


def place_in_directory(
    target: Path,
    model_files: Path,
    *,
    card: str,
    checkpoint: Path | None = None,
    checkpoint_name: str | None = None,
) -> Path:
    """Replace the directory ``target`` with a new push, at once; returns ``target``.

    Args:
        target: the destination directory.
        model_files: a directory holding the model (a checkpoint or a saved model); its training
            state files (optimizer, scheduler, RNG, trainer state) are left out.
        card: the model card, written as ``README.md``.
        checkpoint: a checkpoint to keep in the destination too (``hub_strategy`` ``checkpoint``
            or ``all_checkpoints``), whole.
        checkpoint_name: its folder in the destination (``last-checkpoint``, ``checkpoint-<n>``).
    """

    def fill(staging: Path) -> None:
        for child in sorted(model_files.iterdir()):
            if child.is_file() and not _TRAINING_STATE.match(child.name):
                _link_or_copy(str(child), str(staging / child.name))
            elif child.is_dir() and not _CHECKPOINT_FOLDER.match(child.name):
                _copy_tree(child, staging / child.name)
        if target.is_dir():  # earlier pushes' checkpoints stay, as files a commit does not touch
            for child in sorted(target.iterdir()):
                kept = child.is_dir() and _CHECKPOINT_FOLDER.match(child.name)
                if kept and child.name != checkpoint_name:
                    _copy_tree(child, staging / child.name)
        if checkpoint is not None and checkpoint_name is not None:
            _copy_tree(checkpoint, staging / checkpoint_name)
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")

    return ckpt.write_directory(target, fill)


# --- timing -----------------------------------------------------------------------------------


class Pusher:
    """Runs pushes one at a time on a background thread, and knows whether one is running.

    transformers' rule: a save that comes while a push is in progress is not pushed, unless
    ``hub_always_push``; then it waits its turn. ``wait`` is the end of training's
    ``_finish_current_push``. A push that fails in the background is logged with the
    destination and the error (training goes on, as with transformers' background commits).
    """

    def __init__(self, destination: PushDestination) -> None:
        self.destination = destination
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future[PushResult]] = []
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """Whether a push is queued or running."""
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            return bool(self._pending)

    def submit(self, work: Callable[[], PushResult]) -> concurrent.futures.Future[PushResult]:
        """Queue ``work`` behind the pushes already queued; returns its future."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="trainbus-push"
                )
            future = self._executor.submit(work)
            self._pending.append(future)
        future.add_done_callback(self._report)
        return future

    def wait(self) -> None:
        """Wait until every queued push is done (failures were logged as they happened)."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            logger.info("waiting for the current push", destination=str(self.destination))
            concurrent.futures.wait(pending)

    def close(self) -> None:
        """Wait for the queued pushes and stop the thread."""
        self.wait()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _report(self, future: concurrent.futures.Future[PushResult]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            logger.error(
                "push failed",
                destination=str(self.destination),
                error=f"{type(error).__name__}: {error}",
            )


def staging_name(step: int | str) -> str:
    """The hidden snapshot of a push in ``output_dir`` (removed at the next ``train()`` if a
    crash left it: ``trainbus.trainer._checkpoint.recover_interrupted_saves``)."""
    return f".{ckpt.PUSH_PREFIX}-{step}.tmp-{os.getpid()}"
