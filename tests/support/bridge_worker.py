"""A transformers script with ``TrainbusCallback``, run in its own process by the bridge tests.

    python -m tests.support.bridge_worker OUTPUT_DIR endless   # trains until it is killed
    python -m tests.support.bridge_worker OUTPUT_DIR raise     # a callback raises at step 3

``report_to`` comes from ``$BRIDGE_REPORT_TO`` (comma-separated, default ``mlflow``) and is set on
transformers' arguments, as a user of transformers sets it; the bridge takes it over.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import transformers

from tests.support.tiny_bert import tiny_bert
from trainbus import TrainbusCallback

RAISE_AT_STEP = 3


class Boom(transformers.TrainerCallback):
    """Fails the training from a hook, as a bug in a user's callback would."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == RAISE_AT_STEP:
            raise RuntimeError(f"boom at step {RAISE_AT_STEP}")


def main(output_dir: str, mode: str) -> None:
    model, rows = tiny_bert()
    args = transformers.TrainingArguments(
        output_dir=output_dir,
        max_steps=200_000 if mode == "endless" else 10,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=os.environ.get("BRIDGE_REPORT_TO", "mlflow").split(","),
        disable_tqdm=True,
        use_cpu=True,
    )
    callbacks: list[Any] = [TrainbusCallback()]
    if mode == "raise":
        callbacks.append(Boom())
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
