"""Flyte tasks for the Flyte sink's tests: flytekit runs only tasks defined at module level.

Each task returns a JSON text (a task's output must be a type flytekit knows) describing what
happened inside it; the tests read the checkpoint store and the deck from outside, as a user
would.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import flytekit

from tests.support.tiny_bert import tiny_bert

__all__ = ["push_from_plain_thread", "train_in_task"]


def _store() -> str:
    """Where the task's checkpoint store writes (flytekit has no public accessor for it)."""
    return str(flytekit.current_context().checkpoint._checkpoint_dest)  # type: ignore[attr-defined]


def _arguments(module: Any, output_dir: Path, **extra: Any) -> Any:
    return module.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=4,
        logging_steps=1,
        save_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        disable_tqdm=True,
        **extra,
    )


@flytekit.task(enable_deck=True)
def train_in_task(workdir: str, flavour: str, continue_run: bool) -> str:
    """Train the tiny BERT for 4 steps (checkpoints at 2 and 4) with the Flyte integration:
    ``report_to=["flyte"]`` on trainbus, ``FlyteCallback()`` on transformers; with
    ``continue_run``, ``evaluate()`` and ``predict()`` follow ``train()``."""
    model, rows = tiny_bert()
    output_dir = Path(workdir) / flavour
    if flavour == "trainbus":
        import trainbus

        args = _arguments(trainbus, output_dir, report_to=["flyte"])
        trainer: Any = trainbus.Trainer(model=model, args=args, train_dataset=rows)
    else:
        import transformers
        from transformers.integrations import FlyteCallback

        args = _arguments(transformers, output_dir, report_to="none")
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=rows, callbacks=[FlyteCallback()]
        )
    trainer.train()
    if continue_run:
        trainer.evaluate(rows)
        trainer.predict(rows)
    return json.dumps(
        {
            "store": _store(),
            "output_dir": str(output_dir),
            "log_history": trainer.state.log_history,
        }
    )


@flytekit.task
def push_from_plain_thread(checkpoint: str, run_dir: str) -> str:
    """Build a Flyte sink in the task, then drive it from a new thread that has none of the
    task's context variables, as an event loop started elsewhere would."""
    from tests.sinks.scripted import scripted_run
    from trainbus.sinks.flyte import FlyteSink

    sink = FlyteSink(run_dir=Path(run_dir))
    events = scripted_run(3, checkpoint=Path(checkpoint))

    async def deliver() -> None:
        await sink.open()
        await sink.write(events)
        await sink.close()

    failure: list[BaseException] = []

    def drive() -> None:
        try:
            anyio.run(deliver)
        except BaseException as exc:  # re-raised on the task's thread below
            failure.append(exc)

    thread = threading.Thread(target=drive)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return json.dumps({"store": _store(), "synced": sink.synced})
