"""Two CPU ranks under ``torchrun`` (gloo), with the orchestrator: one run id per job.

The worker half trains a tiny model for a few steps through the orchestrator's launcher, then
evaluates (the same run continued), and writes nothing else: the test reads the run directories.
Three launches: a plain one (torchrun's static rendezvous, whose run id is the word ``none`` on
every job) and two with the same ``--rdzv-id`` into one output_dir (two jobs, two runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed

from tests.support.mlflow_server import free_port
from tests.support.torchrun import run_ranks
from trainbus.bus._journal import JournalReader
from trainbus.bus._paths import RUNS_FOLDER
from trainbus.orchestrator.cli import main
from trainbus.orchestrator.rundir import RunDir, RunRecord

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch was built without torch.distributed"
    ),
]

MODULE = "tests.trainer.test_run_identity_distributed"
STEPS = 3
GUARD_S = 120
"""Far below the process group's default timeout: a rank left waiting for the broadcast fails."""


def _worker(out: str) -> None:
    from trainbus.orchestrator._launcher import OrchestratorLauncher
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    args = TrainingArguments(
        output_dir=out,
        max_steps=STEPS,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(8),
        launcher=OrchestratorLauncher(),
    )
    trainer.train()
    trainer.evaluate()


def _records(out: Path) -> list[tuple[RunDir, RunRecord]]:
    dirs = [RunDir(p) for p in sorted((out / RUNS_FOLDER).iterdir())]
    return [(d, d.read_record()) for d in dirs]


def _launch(out: Path, *rendezvous: str) -> None:
    done = run_ranks(
        MODULE, out, rendezvous=rendezvous, env={"TRAINBUS_LAUNCHER": "default"}, timeout_s=GUARD_S
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_a_plain_launch_has_one_run_id_shared_by_both_ranks(tmp_path: Path) -> None:
    """Without a rendezvous id (torchrun says ``none``), both ranks name one run, rank 0 journals
    the job and rank 1 only its failures (none), and evaluate() continued the same run."""
    _launch(tmp_path, f"--master_port={free_port()}")
    records = _records(tmp_path)
    assert [(r.rank, r.world_size) for _, r in records] == [(0, 2), (1, 2)]
    assert records[0][1].run_id == records[1][1].run_id != "none"
    assert [d.path.name for d, _ in records] == [
        f"{records[0][1].run_id}-rank0",
        f"{records[0][1].run_id}-rank1",
    ]
    assert [r.status for _, r in records] == ["completed", "completed"]
    assert [r.journal_events for _, r in records] == ["full", "errors"]
    zero = list(JournalReader(records[0][0].journal_path).read_from(0))
    assert sum(type(e).__name__ == "RunStarted" for e in zero) == 2  # train(), then evaluate()
    assert {e.run_id for e in zero} == {records[0][1].run_id}
    assert list(JournalReader(records[1][0].journal_path).read_from(0)) == []


def test_a_reused_rendezvous_id_still_makes_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two jobs launched with the same ``--rdzv-id`` get two run ids, each shared by its two
    ranks; the rendezvous id is recorded, and ``show`` reads the second job's rank 0."""
    for _ in range(2):
        _launch(
            tmp_path,
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            "--rdzv-id=reused-job",
        )
    records = _records(tmp_path)
    by_run: dict[str, list[int]] = {}
    for _, record in records:
        by_run.setdefault(record.run_id, []).append(record.rank)
        assert record.rendezvous_id == "reused-job"
    assert sorted(sorted(ranks) for ranks in by_run.values()) == [[0, 1], [0, 1]]
    assert "reused-job" not in by_run
    second = max(records, key=lambda item: item[1].created)[1].run_id
    assert main(["show", str(tmp_path)]) == 0
    shown = capsys.readouterr()
    assert f"{RUNS_FOLDER}/{second}-rank0" in shown.out
    assert f"other ranks: {second}-rank1 (completed)" in shown.err


if __name__ == "__main__":
    _worker(sys.argv[1])
