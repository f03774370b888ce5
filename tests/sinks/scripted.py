"""A scripted run's events, the same for every sink test (a fake trainer without torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from trainbus.bus._bus import Bus
from trainbus.bus._events import Artifact, Evaluate, Event, Log, RunFinished, RunStarted, RunStatus
from trainbus.bus._retry import RetryPolicy
from trainbus.bus._sink import Sink
from trainbus.bus._stats import SinkReport

T0 = 1_790_000_000.0
CONFIG: dict[str, Any] = {
    "learning_rate": 0.001,
    "num_train_epochs": 2,
    "hub_token": "hf_secret_value",
    "optim_args": {"betas": [0.9, 0.99]},
}
HPARAMS: dict[str, Any] = {"hidden_size": 16, "model_type": "tiny"}


def train_logs(step: int) -> dict[str, float | int | str]:
    return {"loss": 1.0 / step, "learning_rate": 0.001 * (1 - step / 1000), "epoch": step / 10}


def eval_logs(step: int) -> dict[str, float | int | str]:
    return {"eval_loss": 2.0 / step, "eval_accuracy": min(1.0, step / 20), "epoch": step / 10}


def scripted_run(
    steps: int,
    *,
    run_id: str = "run-1",
    eval_every: int = 5,
    checkpoint: Path | None = None,
    status: RunStatus = "completed",
) -> list[Event]:
    """RunStarted, one Log per step (an eval Log every ``eval_every``), an Artifact, RunFinished."""
    events: list[Event] = []

    def add(event_type: type[Any], step: int, **fields: Any) -> None:
        seq = len(events)
        events.append(
            event_type(run_id=run_id, seq=seq, time=T0 + seq * 0.01, global_step=step, **fields)
        )

    add(RunStarted, 0, run_name="tiny-run", output_dir="", config=CONFIG, hparams=HPARAMS)
    for step in range(1, steps + 1):
        add(Log, step, logs=train_logs(step), epoch=step / 10)
        if step % eval_every == 0:
            add(Log, step, logs=eval_logs(step), epoch=step / 10)
            add(Evaluate, step, metrics=eval_logs(step))
    if checkpoint is not None:
        add(Artifact, steps, path=str(checkpoint), kind="checkpoint", name=checkpoint.name)
    add(RunFinished, steps, status=status)
    return events


FAST_RETRY = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, jitter=0.1)


async def deliver_through_bus(
    events: Sequence[Event],
    sinks: Sequence[Sink],
    run_dir: Path,
    *,
    close_deadline: float = 60.0,
) -> dict[str, SinkReport]:
    """Publish ``events`` on a real Bus with a journal and return its per-sink report."""
    bus = Bus(
        run_id=events[0].run_id,
        journal_path=run_dir / "journal.tbj",
        cursor_dir=run_dir / "cursors",
        sinks=sinks,
        close_deadline=close_deadline,
        retry_policy=FAST_RETRY,
    )
    async with bus:
        for event in events:
            bus.publish(event)
        await anyio.sleep(0)
    assert bus.report is not None
    return bus.report


def fake_checkpoint(root: Path) -> Path:
    """A small checkpoint directory (``checkpoint-30``: a weights file and a nested state file),
    for sinks that upload checkpoints."""
    checkpoint = root / "checkpoint-30"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 4096)
    (checkpoint / "sub" / "trainer_state.json").write_text('{"global_step": 30}')
    return checkpoint
