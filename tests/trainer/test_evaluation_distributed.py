"""Two CPU ranks under ``torchrun`` (gloo): evaluation is split between ranks and gathered back.

Each rank evaluates its share of the batches; the gathered predictions, labels, losses and
metrics are what one process evaluating the whole set gets, on both ranks. The worker half of
this module runs inside ``torchrun`` (``python -m torch.distributed.run ... -m
tests.trainer.test_evaluation_distributed OUT``) and writes what each case gave to
``OUT/rank<r>.json``; the test runs the same cases in one process and compares.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed
from torch import nn
from torch.utils.data import Dataset

from tests.support.torchrun import run_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch was built without torch.distributed"
    ),
]


class Numbered(Dataset[dict[str, torch.Tensor]]):
    """The regression samples, each carrying its own index as ``idx``."""

    def __init__(self, length: int) -> None:
        from trainbus.trainer.testing import RegressionDataset

        self.data = RegressionDataset(length, seed=1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.data[index], "idx": torch.tensor(index)}


def _counting_model() -> nn.Module:
    """A tiny regressor that records the sample indices it evaluates and returns them too."""
    from trainbus.trainer.testing import TinyRegressor

    class Counting(TinyRegressor):
        def __init__(self) -> None:
            super().__init__(dropout=0.0)
            self.seen: list[int] = []

        def forward(  # type: ignore[override]  # takes the sample indices too
            self, x: torch.Tensor, labels: torch.Tensor | None = None, idx: Any = None
        ) -> dict[str, torch.Tensor]:
            out = super().forward(x, labels)
            if idx is not None:
                self.seen.extend(int(i) for i in idx)
                out["idx"] = idx
            return out

    torch.manual_seed(0)
    return Counting()


class Ragged(Dataset[dict[str, torch.Tensor]]):
    """Sequences of 1 to 5 tokens, so batches (and ranks) differ in sequence length."""

    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        length = 1 + (index * 3) % 5
        x = torch.linspace(0.0, 1.0, length) + index
        return {"x": x, "labels": torch.sin(x)}


def _pad_batch(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width = max(len(sample["x"]) for sample in samples)
    x = torch.zeros(len(samples), width)
    labels = torch.full((len(samples), width), -100.0)
    for row, sample in enumerate(samples):
        x[row, : len(sample["x"])] = sample["x"]
        labels[row, : len(sample["labels"])] = sample["labels"]
    return {"x": x, "labels": labels}


class TokenModel(nn.Module):
    """Per-token predictions; the loss is summed and divided by the label tokens it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.shift = nn.Parameter(torch.tensor(-0.2))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        logits = x * self.scale + self.shift
        out = {"logits": logits}
        if labels is not None:
            real = labels != -100
            out["loss"] = ((logits - labels)[real] ** 2).sum() / kwargs["num_items_in_batch"]
        return out


def _args(out: str, **overrides: Any) -> Any:
    from trainbus.trainer import TrainingArguments

    settings: dict[str, Any] = {
        "output_dir": out,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "report_to": "none",
        **overrides,
    }
    return TrainingArguments(**settings)


def _arrays(value: Any) -> list[Any]:
    """Predictions as a list of plain arrays: a tuple's items, or the one array."""
    items = value if isinstance(value, tuple | list) else (value,)
    return [np.asarray(item).tolist() for item in items]


def _mse_metrics(prediction: Any) -> dict[str, float]:
    logits, ids = prediction.predictions
    return {
        "mse": float(((logits - prediction.label_ids) ** 2).mean()),
        "samples": float(len(ids)),
        "loss_rows": float(len(prediction.losses)),
    }


def _counted(out: str, length: int, batch_size: int) -> dict[str, Any]:
    """Evaluate and predict a numbered set; what each rank computed and what it returned."""
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher

    model = _counting_model()
    args = _args(out, per_device_eval_batch_size=batch_size, include_for_metrics=["loss"])
    trainer = Trainer(model, args, compute_metrics=_mse_metrics, launcher=LocalLauncher())
    metrics = trainer.evaluate(Numbered(length))
    predicted = trainer.predict(Numbered(length))
    return {
        "seen": model.seen,
        "metrics": {k: v for k, v in metrics.items() if not k.endswith(_SPEED)},
        "predictions": _arrays(predicted.predictions),
        "labels": _arrays(predicted.label_ids),
    }


_SPEED = ("_runtime", "_per_second")


def _ragged(out: str) -> dict[str, Any]:
    """Evaluate and predict sequences of several lengths, moving results off every step."""
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher

    torch.manual_seed(0)
    args = _args(out, per_device_eval_batch_size=2, eval_accumulation_steps=1)
    trainer = Trainer(
        TokenModel(),
        args,
        data_collator=_pad_batch,
        compute_metrics=lambda p: {"tokens": float((p.label_ids != -100).sum())},
        launcher=LocalLauncher(),
    )
    metrics = trainer.evaluate(Ragged())
    predicted = trainer.predict(Ragged())
    return {
        "metrics": {k: v for k, v in metrics.items() if not k.endswith(_SPEED)},
        "predictions": _arrays(predicted.predictions),
        "labels": _arrays(predicted.label_ids),
    }


def _batched(out: str) -> dict[str, Any]:
    """``batch_eval_metrics``: a running mean over the batches compute_metrics is handed."""
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher

    totals = {"squares": 0.0, "samples": 0}

    def running(prediction: Any, compute_result: bool) -> dict[str, float]:
        logits, _ = prediction.predictions
        totals["squares"] += float(((logits - prediction.label_ids) ** 2).sum())
        totals["samples"] += len(logits)
        if not compute_result:
            return {}
        return {"mse": totals["squares"] / totals["samples"], "samples": totals["samples"]}

    args = _args(out, per_device_eval_batch_size=2, batch_eval_metrics=True)
    trainer = Trainer(_counting_model(), args, compute_metrics=running, launcher=LocalLauncher())
    metrics = trainer.evaluate(Numbered(9))
    return {"metrics": {k: v for k, v in metrics.items() if not k.endswith(_SPEED)}}


def _mismatched(out: str) -> dict[str, Any]:
    """Rank 1's model returns one output more than rank 0's: the error both ranks raise."""
    from trainbus.bus._errors import TrainbusError
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import TinyRegressor

    class Uneven(TinyRegressor):
        def forward(  # type: ignore[override]  # adds an output on rank 1
            self, x: torch.Tensor, labels: torch.Tensor | None = None
        ) -> dict[str, torch.Tensor]:
            out = super().forward(x, labels)
            if os.environ.get("RANK") == "1":
                out["extra"] = out["logits"]
            return out

    trainer = Trainer(Uneven(dropout=0.0), _args(out), launcher=LocalLauncher())
    try:
        trainer.predict(Numbered(5))
    except TrainbusError as error:
        return {"error": str(error)}
    return {"error": None}


def _trained(out: str, batch_size: int) -> dict[str, Any]:
    """Four steps of training, evaluating every two; the weights and the logged eval losses."""
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    torch.manual_seed(0)
    args = _args(
        out,
        max_steps=4,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=3,
        learning_rate=0.1,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(11, seed=2),
        launcher=LocalLauncher(),
    )
    trainer.train()
    return {
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
        "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
    }


def _cases(out: str, train_batch_size: int) -> dict[str, Any]:
    return {
        "even": _counted(str(Path(out, "even")), 11, 3),  # 4 batches of 3, 3 and 2 samples
        "filler": _counted(str(Path(out, "filler")), 9, 2),  # 5 batches: one filler on rank 1
        "ragged": _ragged(str(Path(out, "ragged"))),
        "batched": _batched(str(Path(out, "batched"))),
        "mismatched": _mismatched(str(Path(out, "mismatched"))),
        "trained": _trained(str(Path(out, "trained")), train_batch_size),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both ranks' reports (one torchrun launch) and the single-process one."""
    out = tmp_path_factory.mktemp("evaluation")
    done = run_ranks("tests.trainer.test_evaluation_distributed", out)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"ranks": ranks, "single": _cases(str(out / "single"), 4)}


def test_each_rank_evaluates_its_share_once(runs: dict[str, Any]) -> None:
    """With 11 samples in 4 batches, the ranks evaluate 6 and 5 different samples (once each,
    evaluate() then predict()), together the whole set."""
    first, second = (report["even"]["seen"] for report in runs["ranks"])
    assert len(first) == 2 * 6 and len(second) == 2 * 5
    for one, other in ((first[:6], second[:5]), (first[6:], second[5:])):
        assert set(one).isdisjoint(other)
        assert sorted(one + other) == list(range(11))
    assert runs["single"]["even"]["seen"] == list(range(11)) * 2


def test_a_filler_batch_is_computed_but_never_counted(runs: dict[str, Any]) -> None:
    """With 9 samples in 5 batches of 2, rank 1 runs the first batch again as a filler; the
    gathered predictions still hold every sample once, in order."""
    first, second = (
        report["filler"]["seen"][: len(report["filler"]["seen"]) // 2] for report in runs["ranks"]
    )
    assert sorted(set(first) | set(second)) == list(range(9))
    assert len(first) == 5 and len(second) == 6
    assert second[-2:] == [0, 1]  # the filler: the first batch again
    for report in runs["ranks"]:
        assert report["filler"]["predictions"][1] == list(range(9))
        assert report["filler"]["metrics"]["eval_samples"] == 9
        assert report["filler"]["metrics"]["eval_loss_rows"] == 9


@pytest.mark.parametrize("case", ["even", "filler", "ragged", "batched"])
def test_two_ranks_return_what_one_process_does(runs: dict[str, Any], case: str) -> None:
    """Metrics (eval_loss a sample-weighted mean), predictions and labels equal one process's
    evaluation of the whole set, in the data set's order, on both ranks; ragged sequences are
    padded with -100 as one process pads them."""
    single = runs["single"][case]
    for report in runs["ranks"]:
        ours = report[case]
        assert ours["metrics"].keys() == single["metrics"].keys()
        for key, value in single["metrics"].items():
            assert ours["metrics"][key] == pytest.approx(value, rel=1e-6), key
        if case == "batched":
            continue
        for mine, theirs in zip(ours["labels"], single["labels"], strict=True):
            assert np.shape(mine) == np.shape(theirs)
            assert np.allclose(mine, theirs, rtol=1e-6, atol=0)
        for mine, theirs in zip(ours["predictions"], single["predictions"], strict=True):
            assert np.shape(mine) == np.shape(theirs)
            assert np.allclose(mine, theirs, rtol=1e-6, atol=0)


def test_outputs_that_differ_between_ranks_fail_on_both_naming_them(runs: dict[str, Any]) -> None:
    """Rank 1's extra output is reported on both ranks (not a wait for the other rank): the
    message names the ranks and what each returned."""
    assert runs["single"]["mismatched"]["error"] is None
    for report in runs["ranks"]:
        message = report["mismatched"]["error"]
        assert message is not None
        assert "differ between ranks" in message and "rank 1 returned" in message


def test_two_ranks_train_like_one_process_with_the_doubled_batch(runs: dict[str, Any]) -> None:
    """Four steps of 2 samples on each of 2 ranks give the weights of 4 samples in one process,
    and the evaluations during training report the same eval_loss on both ranks and alone."""
    single = runs["single"]["trained"]
    for report in runs["ranks"]:
        ours = report["trained"]
        assert len(ours["eval_losses"]) == 2
        assert ours["eval_losses"] == pytest.approx(single["eval_losses"], rel=1e-6)
        for mine, theirs in zip(ours["weights"], single["weights"], strict=True):
            assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-7)


if __name__ == "__main__":
    report = _cases(sys.argv[1], 2)
    Path(sys.argv[1], f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
