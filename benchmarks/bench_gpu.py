"""The Trainer's overhead and the bus's publish cost when CUDA does the training.

Runs only where torch sees a CUDA device. Elsewhere it says so, exits with ``SKIPPED_EXIT`` (the
suite reports it as skipped) and writes nothing, so the result file from the last GPU machine
stays in ``results/gpu.json``; its machine card names that machine.

Two questions:

* **Trainer vs a hand-written loop on the GPU.** The same contenders as ``bench_trainer`` (the
  hand loop and ``trainer.Trainer`` with its default callbacks, no progress bar), on CUDA, for
  two models: the shared workload's small MLP, whose steps are bound by kernel launches (the
  worst case for any Python per step), and a wide MLP whose steps are bound by the GPU's
  arithmetic. Each logs every step (the issue's setting: a ``.item()`` read-back, so a device
  sync, every step) and every 10 steps (the loss kept on the device in between, as both loops do).
  A run's steady time per step runs from the log entry of step 10 to that of the last step;
  each of those follows a read-back, so the interval holds exactly the GPU work of the steps
  between. Best run of each contender, as in ``bench_trainer``; the paired median beside it.
* **Publish cost with a CUDA training thread.** ``bus.emit(StepEnd, ...)`` timed call by call,
  16 events per training step, while the same thread drives the small MLP on CUDA (its loss
  read back each step) and the bus's loop drains in its own thread, with 0, 1 and 4 sinks.

Run: ``python -m benchmarks.bench_gpu [--quick] [--rounds N]``; writes
``benchmarks/results/gpu.json``. ``--cpu-dry-run`` runs the same functions on the CPU with a
smaller batch, quick, and writes nothing: a check that the script works, run by the tests (it
cannot cover what only CUDA does: pinned copies, the Trainer choosing the GPU).
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks._common import (
    SKIPPED_EXIT,
    Headline,
    Workload,
    abab_order,
    bench_parser,
    format_table,
    median,
    percentile,
    write_result,
)
from benchmarks._contenders import BatchList, Classifier, unwrap
from benchmarks.bench_bus import CountingSink, _running, _timer_overhead_ns
from benchmarks.bench_trainer import WARM_UP_STEPS, _silenced, train_journaled
from trainbus.bus import Bus, StepEnd

TARGET_PUBLISH_NS = 2000

WORKLOADS = {
    "small MLP (launch-bound)": Workload(),
    "wide MLP (compute-bound)": Workload(in_features=1024, hidden=4096, batch_size=2048),
}
LOG_EVERY = (1, 10)

Run = Callable[[], float]
"""One training run; returns the steady seconds per step."""


def _steady(log_times: Sequence[float], every: int) -> float:
    """Seconds per step from the log entry of step ``WARM_UP_STEPS`` to the last one."""
    if every > WARM_UP_STEPS or WARM_UP_STEPS % every:
        raise ValueError(f"log every {every} steps: it must divide {WARM_UP_STEPS}")
    first = WARM_UP_STEPS // every - 1
    if len(log_times) <= first + 1:
        raise ValueError(f"a run needs more than {WARM_UP_STEPS} steps of logs, got {log_times}")
    return (log_times[-1] - log_times[first]) / ((len(log_times) - 1 - first) * every)


def _hand_loop(work: Workload, steps: int, every: int, device: torch.device) -> float:
    """The Trainer's work written out for CUDA, as tight as a careful user would write it.

    Logging every step it reads the step's loss back directly; otherwise it keeps the step
    losses in a list and sums them once per log entry, so it launches no extra kernel per step
    (the Trainer's ``LossSum`` does the same).
    """
    torch.manual_seed(work.seed)
    model = Classifier(work).to(device)
    loader = DataLoader(
        BatchList(work),
        batch_size=1,
        shuffle=True,
        collate_fn=unwrap,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(work.seed),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=work.learning_rate, weight_decay=0.0, fused=work.fused_adamw
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    model.train()
    losses: list[torch.Tensor] = []
    step = 0
    log_times: list[float] = []
    while step < steps:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = model(**batch)["loss"]
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), work.max_grad_norm)
            optimizer.step()
            learning_rate = scheduler.get_last_lr()[0]
            scheduler.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
            if step % every == 0:
                total = losses[0].item() if every == 1 else torch.stack(losses).sum().item()
                losses.clear()
                logs = {
                    "loss": total / every,
                    "grad_norm": grad_norm.item(),
                    "learning_rate": learning_rate,
                    "epoch": step / len(loader),
                }
                print({k: f"{v:.4g}" for k, v in logs.items()})
                log_times.append(time.time())
            if step >= steps:
                break
    return _steady(log_times, every)


def _trainbus(work: Workload, steps: int, every: int, device: torch.device, workdir: Path) -> float:
    """``Trainer.train()`` as it runs by default on a GPU; the journal's log entries give times."""
    from trainbus.bus._events import Log

    trainer, events, _ = train_journaled(
        work, steps, workdir, logging_steps=every, use_cpu=device.type == "cpu"
    )
    if trainer.args.device.type != device.type:
        raise RuntimeError(f"the Trainer trained on {trainer.args.device}, not on {device}")
    return _steady([e.time for e in events if isinstance(e, Log) and "loss" in e.logs], every)


def _trainer_rows(
    steps: int, rounds: int, device: torch.device, workloads: dict[str, Workload]
) -> tuple[list[dict[str, Any]], list[Headline]]:
    rows: list[dict[str, Any]] = []
    headline: list[Headline] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for label, work in workloads.items():
            torch.set_num_threads(work.threads)
            for every in LOG_EVERY:
                runs: dict[str, Run] = {
                    "hand loop": partial(_hand_loop, work, steps, every, device),
                    "trainbus": partial(_trainbus, work, steps, every, device, Path(tmp)),
                }
                times: dict[str, list[float]] = {}
                with _silenced():
                    for run in runs.values():  # warm-up: kernels, allocator, first-call costs
                        run()
                    for name in abab_order(list(runs), rounds):
                        times.setdefault(name, []).append(runs[name]())
                best = min(times["trainbus"]) / min(times["hand loop"])
                paired = median(
                    [a / b for a, b in zip(times["trainbus"], times["hand loop"], strict=True)]
                )
                rows.append(
                    {
                        "workload": label,
                        "log every": every,
                        "hand loop best us/step": 1e6 * min(times["hand loop"]),
                        "trainbus best us/step": 1e6 * min(times["trainbus"]),
                        "best ratio": best,
                        "paired median ratio": paired,
                        "runs": rounds,
                    }
                )
                headline.append(
                    Headline(
                        "trainbus Trainer vs hand-written loop on a CUDA GPU: "
                        f"{label}, logging every {every} step{'s' if every > 1 else ''}, "
                        f"time per step, best of {rounds} runs each",
                        best,
                        "x",
                        "-",
                        None,
                        note=f"median of the paired ratios {paired:.3f}; "
                        f"hand loop {1e6 * min(times['hand loop']):.0f} us/step",
                    )
                )
    return rows, headline


def _cuda_step(work: Workload, device: torch.device) -> Callable[[], float]:
    """One training step of the small MLP on CUDA, its loss read back (a device sync)."""
    model = Classifier(work).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.learning_rate, fused=True)
    batches = [{k: v.to(device) for k, v in b.items()} for b in BatchList(work).batches]
    index = 0

    def step() -> float:
        nonlocal index
        loss = model(**batches[index % len(batches)])["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        index += 1
        return float(loss.item())

    return step


def _publish_cost(
    sinks: int, steps: int, device: torch.device, root: Path, burst: int = 16
) -> dict[str, Any]:
    """Emit ``burst`` events per CUDA training step, each emit timed on the training thread."""
    step = _cuda_step(Workload(), device)
    attached = [CountingSink(f"count-{i}") for i in range(sinks)]
    bus = Bus(run_id="bench", journal_path=root / f"gpu-cost-{sinks}.tbj", sinks=attached)
    clock = time.perf_counter_ns
    emit = bus.emit
    costs = [0] * (steps * burst)
    step_ns: list[int] = []
    with _running(bus):
        for i in range(200):  # warm-up: kernels, allocator, the loop's first bursts
            step()
            for _ in range(10):
                emit(StepEnd, global_step=i, epoch=0.0)
        bus.fsync()
        gc.collect()
        gc.disable()
        try:
            for s in range(steps):
                began = clock()
                step()
                step_ns.append(clock() - began)
                for j in range(burst):
                    start = clock()
                    emit(StepEnd, global_step=s, epoch=0.0)
                    costs[s * burst + j] = clock() - start
        finally:
            gc.enable()
        bus.fsync()
    return {
        "sinks": sinks,
        "events": len(costs),
        "median_ns": median(costs),
        "p99_ns": percentile(costs, 99),
        "max_ns": float(max(costs)),
        "cuda step median_us": median(step_ns) / 1000,
    }


def _publish_rows(steps: int, device: torch.device) -> tuple[list[dict[str, Any]], list[Headline]]:
    with tempfile.TemporaryDirectory(prefix="bench-gpu-bus-") as tmp:
        rows = [_publish_cost(sinks, steps, device, Path(tmp)) for sinks in (0, 1, 4)]
    worst = max(rows, key=lambda r: r["median_ns"])
    worst_p99 = max(rows, key=lambda r: r["p99_ns"])
    title = "publish cost per event with a CUDA training thread"
    return rows, [
        Headline(
            f"{title}, median (worst of 0/1/4 sinks)",
            worst["median_ns"],
            "ns",
            f"<= {TARGET_PUBLISH_NS} ns",
            worst["median_ns"] <= TARGET_PUBLISH_NS,
            note="16 events after each step of the small MLP on CUDA; includes "
            f"~{_timer_overhead_ns():.0f} ns of timer overhead",
        ),
        Headline(f"{title}, p99 (worst of 0/1/4 sinks)", worst_p99["p99_ns"], "ns", "-", None),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__, "fewer steps and rounds")
    parser.add_argument("--rounds", type=int, default=None, help="runs per contender")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every step of the benchmark on the CPU, quick, and write nothing (a check that "
        "the script works, on a machine without a GPU)",
    )
    options = parser.parse_args(argv)
    workloads = WORKLOADS
    if options.cpu_dry_run:
        options.quick = True
        device = torch.device("cpu")
        workloads = {label: Workload(batch_size=16) for label in WORKLOADS}
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("bench_gpu: no CUDA device here; nothing measured, results/gpu.json left as it is")
        raise SystemExit(SKIPPED_EXIT)
    steps = 60 if options.quick else 200
    rounds = options.rounds or (3 if options.quick else 15)
    began = time.perf_counter()
    trainer_rows, trainer_heads = _trainer_rows(steps, rounds, device, workloads)
    publish_rows, publish_heads = _publish_rows(300 if options.quick else 2000, device)
    print(format_table(trainer_rows))
    print()
    print(format_table(publish_rows))
    if options.cpu_dry_run:
        print("bench_gpu: CPU dry run, nothing written")
        return
    path = write_result(
        "gpu",
        quick=options.quick,
        headline=[*trainer_heads, *publish_heads],
        tables={"trainer vs hand loop": trainer_rows, "publish cost": publish_rows},
        extra={
            "workload": "; ".join(f"{k}: {w.describe()}" for k, w in workloads.items()),
            "steps": steps,
            "rounds": rounds,
            "elapsed_s": time.perf_counter() - began,
        },
    )
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
