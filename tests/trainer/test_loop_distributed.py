"""Two CPU ranks under ``torchrun`` (gloo): a stop on one rank stops both, in step.

The worker half of this module runs inside ``torchrun`` (``python -m torch.distributed.run ...
-m tests.trainer.test_loop_distributed OUT``) and writes what it saw to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
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

    class StopOnRankOne(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if rank == 1 and state.global_step == 3:
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir=out,
        max_steps=8,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(16),
        callbacks=[StopOnRankOne()],
        launcher=LocalLauncher(),
    )
    output = trainer.train()
    report = {
        "global_step": output.global_step,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def test_two_ranks_stop_together_and_stay_identical(tmp_path: Path) -> None:
    """Rank 1 stops at step 3; rank 0 stops there too, with the same mean losses and weights."""
    done = run_ranks("tests.trainer.test_loop_distributed", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in reports] == [3, 3]
    assert reports[0]["losses"] == reports[1]["losses"]
    assert len(reports[0]["losses"]) == 3
    assert reports[0]["weights"] == reports[1]["weights"]
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert not (checkpoint / "rng_state.pth").exists()


if __name__ == "__main__":
    _worker(sys.argv[1])
