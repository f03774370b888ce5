"""The final model, written at the end of training for the sinks that upload it.

transformers' integrations upload the trained model from their ``on_train_end``: W&B with
``WANDB_LOG_MODEL=end`` (through a throw-away ``Trainer`` saving into a temporary directory),
DVCLive with ``HF_DVCLIVE_LOG_MODEL`` (into ``<output_dir>/best`` or ``/last``), MLflow and Comet
by uploading ``output_dir``. A trainbus sink cannot save a model (it never sees one, and runs
on another thread or in another process), and the usual script calls ``trainer.save_model()``
after ``train()`` returned, when the run and its sinks are closed. So the trainer writes the model
itself, once, when the run's bus says a sink wants it (``RunContext.wants_final_model``, set from
``Sink.wants_final_model``): after the training loop, with the best checkpoint's weights loaded
under ``load_best_model_at_end``, before ``TrainEnd`` (where transformers' callbacks do it) and
``RunFinished``. It publishes ``Artifact(kind="model")`` naming the directory.

The directory is ``<output_dir>/final_model``, written the way ``save_model()`` writes (config and
safetensors weights, the processing class, ``training_args.json``), so
``AutoModel….from_pretrained`` loads it. It is trainbus's own: a hidden sibling is renamed into
place, replacing the previous ``train()``'s (never a checkpoint, never ``output_dir`` itself, where
a script's own ``save_model()`` writes). Only the process that saves (``args.should_save``) writes
it, and only where a sink wants it, so a run without such a sink pays nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from trainbus.bus._events import Artifact
from trainbus.trainer import _checkpoint as ckpt

if TYPE_CHECKING:
    from trainbus.trainer._trainer import Trainer

__all__ = ["publish_final_model"]

logger = structlog.get_logger(__name__)


def publish_final_model(trainer: Trainer) -> Path | None:
    """Write ``trainer``'s model to ``<output_dir>/final_model`` and publish its ``Artifact``,
    when a sink of the run wants it; returns the directory, or ``None`` when nothing was done."""
    bus = trainer._bus
    if bus is None or not bus.context.wants_final_model or not trainer.args.should_save:
        return None
    args = trainer.args
    target = Path(args.output_dir) / ckpt.FINAL_MODEL_DIR
    ckpt.write_directory(
        target,
        lambda staging: ckpt.save_model(
            staging,
            trainer.model,
            args.to_dict(),
            trainer.processing_class,
            trainer.data_collator,
        ),
    )
    logger.info("final model written", path=str(target))
    trainer._publish(Artifact, kind="model", path=str(target), name=ckpt.FINAL_MODEL_DIR)
    return target
