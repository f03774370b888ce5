"""Journal bytes per training step on each rank of a two-rank ``torchrun`` job.

World rank zero journals every event; the other ranks journal by need
(``TRAINBUS_RANK_JOURNAL``: ``errors``, the default, keeps only a rank's own failure; ``none`` no
journal; ``full`` everything). One ``torchrun --standalone --nproc_per_node 2`` launch (gloo, CPU)
trains the test suite's tiny regressor through the orchestrator's launcher, logging every step
(the heaviest per-step stream), under each setting and for two run lengths. The bytes per step
are the slope between the two lengths, so the fixed cost of a run (``RunStarted`` with the
arguments, ``RunFinished``) is reported apart and not smeared over the steps.

Run: ``python -m benchmarks.bench_rank_journals [--quick]``; writes
``benchmarks/results/rank_journals.json``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from benchmarks._common import (
    BENCH_DIR,
    Headline,
    bench_mode,
    bench_parser,
    format_table,
    write_result,
)

LENGTHS: Final = {"full": (200, 1000), "quick": (50, 250), "smoke": (10, 30)}
SETTINGS: Final = ("errors", "none", "full")
TIMEOUT_S: Final = 600


def _journal_bytes(output_dir: Path, rank: int) -> int:
    """Bytes on disk of the journal of ``rank`` in ``output_dir`` (0 when it keeps none)."""
    (run_dir,) = (output_dir / "trainbus").glob(f"*-rank{rank}")
    journal = run_dir / "journal"
    return sum(p.stat().st_size for p in journal.iterdir()) if journal.is_dir() else 0


def _worker(out: Path, lengths: list[int]) -> None:
    """One rank: train under each setting and run length, each in its own output_dir."""
    from trainbus.orchestrator._launcher import OrchestratorLauncher
    from trainbus.trainer import Trainer, TrainingArguments
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    for setting in SETTINGS:
        os.environ["TRAINBUS_RANK_JOURNAL"] = setting
        for steps in lengths:
            args = TrainingArguments(
                output_dir=str(out / f"{setting}-{steps}"),
                max_steps=steps,
                per_device_train_batch_size=2,
                logging_steps=1,
                save_strategy="no",
                use_cpu=True,
                disable_tqdm=True,
                report_to="none",
                log_level="warning",
            )
            trainer = Trainer(
                TinyRegressor(dropout=0.0),
                args,
                train_dataset=RegressionDataset(64),
                launcher=OrchestratorLauncher(),
            )
            trainer.train()


def _launch(out: Path, lengths: tuple[int, int]) -> None:
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(BENCH_DIR.parent),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "benchmarks.bench_rank_journals",
        "--worker",
        str(out),
        *map(str, lengths),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the two-rank job failed: {done.stderr[-4000:]}")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(Path(sys.argv[2]), [int(n) for n in sys.argv[3:]])
        return
    args = bench_parser(__doc__, "shorter runs (50 and 250 steps)").parse_args()
    mode = bench_mode(args.quick)
    short, long = LENGTHS[mode]
    rows = []
    with tempfile.TemporaryDirectory(prefix="trainbus-rank-journals-") as tmp:
        _launch(Path(tmp), (short, long))
        for setting in SETTINGS:
            for rank in (0, 1):
                size = {
                    n: _journal_bytes(Path(tmp) / f"{setting}-{n}", rank) for n in (short, long)
                }
                per_step = (size[long] - size[short]) / (long - short)
                rows.append(
                    {
                        "TRAINBUS_RANK_JOURNAL": setting,
                        "rank": rank,
                        "bytes per step": round(per_step, 1),
                        "fixed bytes per run": round(size[short] - per_step * short),
                        f"bytes, {long} steps": size[long],
                    }
                )
    print(format_table(rows, list(rows[0])))
    by = {(r["TRAINBUS_RANK_JOURNAL"], r["rank"]): r["bytes per step"] for r in rows}
    headline = [
        Headline(
            "journal bytes per step, world rank 0 (every event, a log every step)",
            by[("errors", 0)],
            "B",
        ),
        Headline(
            "journal bytes per step, other ranks (default TRAINBUS_RANK_JOURNAL=errors)",
            by[("errors", 1)],
            "B",
            "0 B (only a rank's own failure)",
            by[("errors", 1)] == 0,
        ),
        Headline(
            "journal bytes per step, other ranks with TRAINBUS_RANK_JOURNAL=full",
            by[("full", 1)],
            "B",
        ),
    ]
    write_result(
        "rank_journals", quick=mode != "full", headline=headline, tables={"rank_journals": rows}
    )


if __name__ == "__main__":
    main()
