"""Two CPU ranks under ``torchrun`` (gloo): a stop signal on one rank stops and saves on both.

A signal is one rank's own news; acting on it alone would leave the other rank waiting in a
collective. The worker half of this module runs inside ``torchrun`` (``python -m
torch.distributed.run ... -m tests.trainer.test_signals_distributed OUT``), signals rank 1 only,
and writes what each rank saw to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch.distributed

from tests.support.torchrun import run_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch was built without torch.distributed"
    ),
]


def _worker(out: str) -> None:
    from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    rank = int(os.environ["RANK"])

    class SignalRankOne(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if rank == 1 and state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    args = TrainingArguments(
        output_dir=out,
        max_steps=50,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=100,
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(16),
        callbacks=[SignalRankOne()],
        launcher=LocalLauncher(),
    )
    output = trainer.train()
    signalled = trainer.stopped_by_signal
    report = {
        "global_step": output.global_step,
        "signal": None if signalled is None else signalled.name,
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def test_a_signal_on_one_rank_stops_and_saves_both_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM to rank 1 at step 3: both ranks stop at 3, one checkpoint holds both RNG states."""
    done = run_ranks("tests.trainer.test_signals_distributed", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in reports] == [3, 3]
    assert [r["signal"] for r in reports] == [None, "SIGTERM"]
    assert reports[0]["weights"] == reports[1]["weights"]
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-3"]
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()


if __name__ == "__main__":
    _worker(sys.argv[1])
