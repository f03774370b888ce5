"""What agreeing on the control flags costs two CPU ranks (gloo, ``torchrun``) per update.

The benchmark launches itself under ``torchrun --standalone --nproc_per_node=2`` (loopback,
one torch thread per rank) and, on each rank:

* **collectives per optimizer step**: trains a few updates at ``gradient_accumulation_steps``
  1 and 4 with no log, evaluation or save due, counting DDP's gradient all-reduces (a comm hook
  around its buckets) and every other collective (``torch.distributed``'s functions wrapped);
  the target is DDP's own plus at most one small all-reduce;
* **step time**: the same MLP trained by trainbus's ``Trainer`` and by a hand-written DDP loop
  (same loader, sampler, optimizer and clipping, no agreement at all), alternated, median
  milliseconds per update on rank 0;
* **agreement**: the flag all-reduce alone, timed over many calls (microseconds).

Run: ``python -m benchmarks.bench_distributed [--quick]``; writes
``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    BENCH_DIR,
    SKIPPED_EXIT,
    Headline,
    bench_mode,
    bench_parser,
    format_table,
    median,
    write_result,
)

STEPS = {"full": 400, "quick": 60, "smoke": 20}
"""Updates per timed run (the first tenth is warm-up)."""
ROUNDS = {"full": 3, "quick": 1, "smoke": 1}
"""Alternations of hand loop and Trainer."""
MERGES = {"full": 5000, "quick": 1000, "smoke": 200}
IN_FEATURES, HIDDEN, CLASSES, BATCH, SAMPLES = 128, 256, 10, 32, 4096


def _model() -> Any:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(
                nn.Linear(IN_FEATURES, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, CLASSES),
            )

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.body(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    return Classifier()


def _dataset() -> Any:
    import torch
    from torch.utils.data import Dataset

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, IN_FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)

    class Samples(Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return SAMPLES

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"x": x[index], "labels": y[index]}

    return Samples()


def _arguments(out: str, steps: int, ga: int) -> Any:
    from trainbus.trainer import TrainingArguments

    return TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ga,
        learning_rate=1e-3,
        optim="adamw_torch",
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
        dataloader_drop_last=True,
    )


def _count(out: str, ga: int) -> dict[str, float]:
    """Collectives per update at ``ga``, after the first update: DDP's buckets, and the rest."""
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import CollectiveCounter

    counter = CollectiveCounter()
    trainer = Trainer(
        _model(),
        _arguments(out, 6, ga),
        train_dataset=_dataset(),
        callbacks=[counter.callback],
        launcher=LocalLauncher(),
    )
    with counter.counting(trainer):
        trainer.train()
    per_update = counter.per_update()
    return {kind: sum(counts) / len(counts) for kind, counts in per_update.items()}


def _trainer_ms(out: str, steps: int) -> float:
    """Median ms per update of trainbus's ``Trainer`` (after a tenth of warm-up)."""
    from trainbus.trainer import Trainer, TrainerCallback
    from trainbus.trainer._launcher import LocalLauncher

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    trainer = Trainer(
        _model(),
        _arguments(out, steps, 1),
        train_dataset=_dataset(),
        callbacks=[Clock()],
        launcher=LocalLauncher(),
    )
    trainer.train()
    return _median_ms(stamps)


def _hand_ms(steps: int) -> float:
    """Median ms per update of a hand DDP loop doing the same work with no agreement."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    model = _model()
    wrapped = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    data = _dataset()
    sampler = DistributedSampler(data, dist.get_world_size(), dist.get_rank(), seed=42)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, drop_last=True)
    stamps: list[float] = []
    epoch = 0
    while len(stamps) < steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = wrapped(**batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            model.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
            if len(stamps) == steps:
                break
        epoch += 1
    return _median_ms(stamps)


def _merge_us(calls: int) -> float:
    """Mean microseconds of the flag agreement alone (``Distributed.merge``)."""
    import torch

    from trainbus.trainer._distributed import Distributed
    from trainbus.trainer._state import TrainerControl

    group = Distributed(2, int(os.environ["RANK"]), torch.device("cpu"))
    control = TrainerControl()
    for _ in range(calls // 10):
        group.merge(control)
    began = time.perf_counter()
    for _ in range(calls):
        group.merge(control)
    return (time.perf_counter() - began) / calls * 1e6


def _median_ms(stamps: list[float]) -> float:
    warm = max(1, len(stamps) // 10)
    gaps = [b - a for a, b in zip(stamps[warm:], stamps[warm + 1 :], strict=False)]
    return median(gaps) * 1e3


def _worker(out: str, mode: str) -> None:
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    steps = STEPS[mode]
    report: dict[str, Any] = {
        "count_ga1": _count(str(Path(out, "count1")), 1),
        "count_ga4": _count(str(Path(out, "count4")), 4),
        "hand_ms": [],
        "trainer_ms": [],
    }
    for index in range(ROUNDS[mode]):
        report["hand_ms"].append(_hand_ms(steps))
        report["trainer_ms"].append(_trainer_ms(str(Path(out, f"timed{index}")), steps))
    report["merge_us"] = _merge_us(MERGES[mode])
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def main() -> None:
    parser = bench_parser(__doc__, "fewer updates and one alternation (about a minute)")
    parser.add_argument("--worker", help=argparse_hidden())
    parser.add_argument("--mode", default="quick", help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.mode)
        return
    mode = bench_mode(args.quick)
    import torch.distributed

    if not torch.distributed.is_available():
        sys.exit(SKIPPED_EXIT)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
            "TRAINBUS_LAUNCHER": "local",
            "PYTHONPATH": str(BENCH_DIR.parent),
        }
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "benchmarks.bench_distributed",
            "--worker",
            tmp,
            "--mode",
            mode,
        ]
        subprocess.run(command, env=env, check=True, cwd=BENCH_DIR.parent)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in (0, 1)]
    _report(ranks, mode)


def _report(ranks: list[dict[str, Any]], mode: str) -> None:
    zero = ranks[0]
    hand, ours = median(zero["hand_ms"]), median(zero["trainer_ms"])
    rows = [
        {"figure": f"collectives per update, GA={ga}, {kind}", "value": zero[f"count_ga{ga}"][kind]}
        for ga in (1, 4)
        for kind in ("ddp", "other")
    ]
    rows += [
        {"figure": "hand DDP loop, ms/update (rank 0)", "value": round(hand, 3)},
        {"figure": "trainbus Trainer, ms/update (rank 0)", "value": round(ours, 3)},
        {"figure": "Trainer / hand loop", "value": round(ours / hand, 3)},
        {"figure": "agreement all-reduce alone, us (rank 0)", "value": round(zero["merge_us"], 1)},
    ]
    print(format_table(rows, ["figure", "value"]))
    extra = {count: zero[count]["other"] for count in ("count_ga1", "count_ga4")}
    worst = max(extra.values())
    headline = [
        Headline(
            "collectives per optimizer step besides DDP's (2 ranks, GA=1 and GA=4, worst)",
            worst,
            "",
            "<= 1",
            worst <= 1,
            "counted on rank 0 with no log, evaluation or save due; DDP's gradient buckets: "
            f"{zero['count_ga1']['ddp']:g} per update",
        ),
        Headline(
            "trainbus Trainer vs hand DDP loop on 2 CPU ranks (time/step)",
            round(ours / hand, 3),
            "x",
            note=f"{ours:.2f} ms vs {hand:.2f} ms per update (median, rank 0)",
        ),
        Headline(
            "agreement all-reduce of the control decisions, 2 CPU ranks (gloo)",
            round(zero["merge_us"], 1),
            "us",
        ),
    ]
    write_result(
        "distributed", quick=mode != "full", headline=headline, tables={"distributed": rows}
    )


def argparse_hidden() -> str:
    """Help text of the options the launcher passes to its own workers."""
    return "(used by the benchmark's own torchrun workers)"


if __name__ == "__main__":
    main()
