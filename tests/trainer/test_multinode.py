"""Two nodes simulated on one machine: checkpoints on shared or per-node storage.

Each test starts two ``torchrun --nnodes 2`` launches (``tests.support.two_nodes``); the worker
half of this module (``-m tests.trainer.test_multinode REPORTS PHASE SAVE_ON_EACH_NODE
LOAD_BEST``) trains a tiny regressor with ``output_dir`` taken from ``TRAINBUS_TEST_OUTPUT_DIR``:
the same directory for both launches (shared storage) or one each (a disk per node). Each rank
writes what it saw, or the error it raised, to ``REPORTS/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch.distributed

from tests.support.two_nodes import Launch, run_two_nodes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch was built without torch.distributed"
    ),
]

MODULE = "tests.trainer.test_multinode"
STEPS = 6
"""Optimizer steps per run; a checkpoint every 2, an evaluation before each."""


def _worker(reports: str, phase: str, save_on_each_node: str, load_best: str) -> None:
    from trainbus.bus import ConfigurationError
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    output_dir = os.environ["TRAINBUS_TEST_OUTPUT_DIR"]
    rank = int(os.environ["RANK"])
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=STEPS,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=load_best == "1",
        metric_for_best_model="eval_loss",
        greater_is_better=True,  # the worst loss: an early checkpoint, not the last weights
        save_on_each_node=save_on_each_node == "1",
        seed=7,
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.1),  # dropout: a resume must restore each rank's RNG state
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(8, seed=1),
        launcher=LocalLauncher(),
    )
    resume: bool | str | None = None
    if phase == "resume":
        resume = True
    elif phase == "disagree":  # rank 0 asks for the latest, rank 1 for the oldest
        resume = True if rank == 0 else str(Path(output_dir, "checkpoint-2"))
    report: dict[str, Any] = {"rank": rank, "node": int(os.environ["GROUP_RANK"])}
    path = Path(reports, f"rank{rank}.json")
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    except ConfigurationError as exc:
        path.write_text(json.dumps({**report, "error": str(exc)}))
        raise
    report["global_step"] = output.global_step
    report["best"] = trainer.state.best_model_checkpoint
    report["weights"] = _weights(trainer.model.state_dict())
    path.write_text(json.dumps(report))


def _weights(tensors: dict[str, Any]) -> dict[str, list[float]]:
    return {name: tensor.flatten().tolist() for name, tensor in sorted(tensors.items())}


def _saved_weights(checkpoint: Path) -> dict[str, list[float]]:
    return _weights(safetensors.torch.load_file(str(checkpoint / "model.safetensors")))


def _job(
    tmp_path: Path,
    phase: str,
    dirs: tuple[Path, Path],
    *,
    each_node: bool,
    load_best: bool,
    **kw: Any,
) -> tuple[list[Launch], list[dict[str, Any]]]:
    """Run one two-node job; its launches and both ranks' reports (rank order)."""
    reports = tmp_path / f"reports-{phase}"
    reports.mkdir()
    launches = run_two_nodes(
        MODULE,
        [str(reports), phase, str(int(each_node)), str(int(load_best))],
        tmp_path / f"logs-{phase}",
        node_env=[{"TRAINBUS_TEST_OUTPUT_DIR": str(d)} for d in dirs],
        **kw,
    )
    found = [reports / f"rank{r}.json" for r in (0, 1)]
    assert all(p.is_file() for p in found), [launch.stderr[-3000:] for launch in launches]
    return launches, [json.loads(p.read_text()) for p in found]


def _assert_succeeded(launches: list[Launch]) -> None:
    for launch in launches:
        assert launch.returncode == 0, launch.stderr[-4000:]


def _assert_trained_alike(reports: list[dict[str, Any]], best_dirs: list[Path]) -> None:
    """Both ranks ended at the last step on the same weights: their best checkpoint's."""
    assert [r["global_step"] for r in reports] == [STEPS, STEPS]
    assert reports[0]["weights"] == reports[1]["weights"]
    for report, directory in zip(reports, best_dirs, strict=True):
        best = Path(report["best"])
        assert best.parent == directory
        assert report["weights"] == _saved_weights(best)


def test_shared_storage_resumes_and_loads_the_best_model(tmp_path: Path) -> None:
    """One output_dir for both nodes (c10d rendezvous): the best model is loaded on both ranks,
    a resume from the latest checkpoint continues bit for bit, and ranks asking to resume from
    different checkpoints both refuse, naming the difference."""
    shared = tmp_path / "shared"
    both = (shared, shared)
    launches, reports = _job(
        tmp_path, "train", both, each_node=False, load_best=True, rendezvous="c10d"
    )
    _assert_succeeded(launches)
    _assert_trained_alike(reports, [shared, shared])
    last = _saved_weights(shared / f"checkpoint-{STEPS}")
    shutil.rmtree(shared / f"checkpoint-{STEPS}")

    launches, reports = _job(
        tmp_path, "resume", both, each_node=False, load_best=False, rendezvous="c10d"
    )
    _assert_succeeded(launches)
    assert [r["global_step"] for r in reports] == [STEPS, STEPS]
    assert reports[0]["weights"] == reports[1]["weights"] == last

    launches, reports = _job(
        tmp_path, "disagree", both, each_node=False, load_best=False, rendezvous="c10d"
    )
    assert [launch.returncode != 0 for launch in launches] == [True, True]
    for report in reports:
        assert report["error"].startswith("resume_from_checkpoint differs between ranks (rank 0")
        assert "'latest'" in report["error"] and "'checkpoint-2'" in report["error"]


def test_per_node_storage_with_save_on_each_node(tmp_path: Path) -> None:
    """A disk per node and save_on_each_node=True: each node holds every checkpoint with both
    ranks' RNG states, the best model loads on both, and resume_from_checkpoint=True takes rank
    0's latest even where node 1 holds a newer one, continuing bit for bit."""
    dirs = (tmp_path / "node0", tmp_path / "node1")
    launches, reports = _job(tmp_path, "train", dirs, each_node=True, load_best=True)
    _assert_succeeded(launches)
    _assert_trained_alike(reports, list(dirs))
    for directory in dirs:
        for step in (2, 4, STEPS):
            checkpoint = directory / f"checkpoint-{step}"
            assert (checkpoint / "rng_state_0.pth").is_file(), checkpoint
            assert (checkpoint / "rng_state_1.pth").is_file(), checkpoint
    last = _saved_weights(dirs[1] / f"checkpoint-{STEPS}")
    assert _saved_weights(dirs[0] / f"checkpoint-{STEPS}") == last
    shutil.rmtree(dirs[0] / f"checkpoint-{STEPS}")  # node 1 alone still has the newest

    launches, reports = _job(tmp_path, "resume", dirs, each_node=True, load_best=True)
    _assert_succeeded(launches)
    _assert_trained_alike(reports, list(dirs))
    for directory in dirs:  # resumed from step 4 on both ranks: step 6 written again, the same
        assert _saved_weights(directory / f"checkpoint-{STEPS}") == last


def test_per_node_storage_without_save_on_each_node_is_a_clear_error(tmp_path: Path) -> None:
    """A disk per node without save_on_each_node: loading the best model at the end, and then
    resuming, each end both nodes with one error naming the checkpoint, the rank and node that
    cannot see it, and the fix, inside the hang guard."""
    dirs = (tmp_path / "node0", tmp_path / "node1")
    launches, reports = _job(tmp_path, "train", dirs, each_node=False, load_best=True)
    assert [launch.returncode != 0 for launch in launches] == [True, True]
    assert not list(dirs[1].glob("checkpoint-*"))
    for report in reports:
        error = report["error"]
        assert error.startswith("load_best_model_at_end: checkpoint checkpoint-")
        assert "is not visible on rank 1 (node 1, host " in error
        assert "save_on_each_node=True" in error and "shared storage" in error

    launches, reports = _job(tmp_path, "resume", dirs, each_node=False, load_best=False)
    assert [launch.returncode != 0 for launch in launches] == [True, True]
    for report in reports:
        error = report["error"]
        assert error.startswith(
            f"resume_from_checkpoint: checkpoint checkpoint-{STEPS} is not visible on rank 1 "
            "(node 1, host "
        )
        assert f"rank 0 (node 0, host {socket.gethostname()}) reads it at {dirs[0]}" in error
        assert "save_on_each_node=True" in error


if __name__ == "__main__":
    _worker(*sys.argv[1:])
