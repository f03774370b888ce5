"""Two CPU ranks under ``torchrun`` (gloo): label tokens, input tokens and flops are job totals.

With ``average_tokens_across_devices`` each rank divides its summed loss by the label tokens of
every rank's window and multiplies it by the number of ranks; the gradient all-reduce averages,
so the update is the mean over every token of the job, exactly what one process training the
same samples in batches twice as large computes. The worker half runs inside ``torchrun``
(``python -m torch.distributed.run ... -m tests.trainer.test_loss_accounting_distributed OUT``)
and writes what it saw to ``OUT/rank<r>.json``; the single-process run is ``OUT/single.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed

from tests.support.torchrun import run_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch was built without torch.distributed"
    ),
]


def _train(out: str, batch_size: int, name: str) -> None:
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import TinyRegressor

    class PaddedRows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        """Rows with 1 to 4 real labels (the rest -100) and as many real input tokens."""

        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            real = 1 + index % 4
            labels = torch.full((4,), -100.0)
            labels[:real] = torch.linspace(-1.0, 1.0, 4)[:real] * (index % 3)
            ids = torch.zeros(4, dtype=torch.long)
            ids[:real] = 1
            return {
                "x": torch.full((4,), index / 16),
                "labels": labels,
                "input_ids": ids,
                "attention_mask": (ids != 0).long(),
            }

    class Summing(TinyRegressor):
        main_input_name = "input_ids"

        def forward(  # type: ignore[override]  # takes the loss keyword arguments
            self,
            x: torch.Tensor,
            labels: torch.Tensor,
            input_ids: Any = None,
            attention_mask: Any = None,  # named, so unused-column removal keeps it
            **kwargs: Any,
        ) -> dict[str, torch.Tensor]:
            logits = self.body(x).expand(-1, 4)
            errors = ((logits - labels)[labels != -100] ** 2).sum()
            return {"logits": logits, "loss": errors / kwargs["num_items_in_batch"]}

        def num_parameters(self, exclude_embeddings: bool = False) -> int:
            return 100

    counts: list[int] = []

    class Recording(Trainer):
        def training_step(
            self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
        ) -> torch.Tensor:
            counts.append(int(num_items_in_batch))
            return super().training_step(model, inputs, num_items_in_batch)

    args = TrainingArguments(
        output_dir=out,
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        include_num_input_tokens_seen="non_padding",
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    torch.manual_seed(0)
    trainer = Recording(
        Summing(dropout=0.0), args, train_dataset=PaddedRows(), launcher=LocalLauncher()
    )
    trainer.train()
    report = {
        "counts": counts,
        "tokens": trainer.state.num_input_tokens_seen,
        "flos": trainer.state.total_flos,
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"{name}.json").write_text(json.dumps(report))


def test_two_ranks_count_job_totals_and_train_as_one_process_would(tmp_path: Path) -> None:
    """Both ranks get the job's label count per window; tokens and flops are summed over ranks;
    the weights equal those of one process training the same samples."""
    done = run_ranks("tests.trainer.test_loss_accounting_distributed", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _train(str(tmp_path / "single"), 4, "single")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "single" / "single.json").read_text())

    assert ranks[0]["counts"] == ranks[1]["counts"]
    assert ranks[0]["counts"] == single["counts"] != []  # the job's labels of each window
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == single["tokens"] == 40
    assert ranks[0]["flos"] == ranks[1]["flos"] == single["flos"] == 6 * 16 * 4 * 100
    for ours, theirs in zip(ranks[0]["weights"], single["weights"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-7)


if __name__ == "__main__":
    _train(sys.argv[1], 2, f"rank{os.environ['RANK']}")
