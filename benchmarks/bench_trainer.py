"""What the ``Trainer`` costs over a hand-written torch loop doing the same work, and over HF's.

Every contender trains the shared workload (``benchmarks._common.Workload``: the MLP, pre-built
batches, AdamW with linear decay, grad-norm clipping at 1.0, one torch thread) for the same
number of optimizer steps and logs **every** step (``logging_steps=1``): the loss and grad norm
are read back and a log line is written each step. Contenders:

* ``hand loop``: plain torch, printing ``{loss, grad_norm, learning_rate, epoch}`` each step;
* ``trainbus``: ``trainer.Trainer`` with its default callbacks and ``disable_tqdm=True`` (the
  default flow and the printer callback), as ``train()`` runs by default: every event published
  on a bus that journals it in the run directory;
* ``hand loop + tqdm`` / ``trainbus + tqdm``: the same, with a progress bar;
* ``hand loop, shortcuts``: the hand loop taking the two shortcuts the Trainer takes on every
  step here (batches read straight from the loader's batch sampler, the parameters listed once
  for clipping and zeroing). The target compares the Trainer with the loop as people write it;
  what the shortcuts save the hand loop, and the Trainer's ratio to this loop (everything else
  the Trainer does: bus, callbacks, bookkeeping), are reported beside it without a target;
* ``transformers``: ``transformers.Trainer`` with the same model, data and arguments.

Output (stdout and stderr) goes to ``/dev/null`` while timing, so terminal speed is not measured.
Two times per run: the end-to-end wall time (the ``train()`` call, or the hand loop from optimizer
creation to its last step), and the steady-state time per step, from the end of step 10 to the
end of the last, taken from each step's wall-clock end (the journal's ``StepEnd`` events for
trainbus, a clock in the loop or a callback for the others). The target is on the second: it is
what a run of any length pays per step; start-up and teardown are reported beside it
(``fixed_ms``). Runs alternate (A B C, C B A, ...); each round's time is divided by the other
contender's in the same round, and the median of those paired ratios is reported.

The target is taken on the *best* run of each contender (the shortest steady-state time per step
over all rounds), as ``timeit`` does: on a shared machine, background load only ever adds time,
and it moved single runs here by 5 to 13 % (standard deviation of the paired ratios), far more
than the 3 % being measured. Each run's time is the mean over all its steady steps, so costs that
come back periodically (the bus draining its queue every 100 ms, a progress bar's refresh) are in
it. The median of the paired ratios is reported beside it without a target. Runs are short (100
steps) and many (41 per contender), so paired runs are close in time and the best run is a
good estimate of what the machine does unloaded.

Run: ``python -m benchmarks.bench_trainer [--quick]``; writes ``benchmarks/results/trainer.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks._common import (
    Headline,
    Workload,
    abab_order,
    bench_args,
    bench_parser,
    format_table,
    median,
    write_result,
)
from benchmarks._contenders import BatchList, Classifier, unwrap

TARGET_OVERHEAD = 1.03

WARM_UP_STEPS = 10
"""Steps left out of the steady-state time per step (first allocations, caches, threads)."""

Timing = tuple[float, float, float]
"""One run: wall-clock seconds and process CPU seconds (all threads) end to end, and the
steady-state wall seconds per step (from the end of step ``WARM_UP_STEPS`` to the last)."""


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(began: tuple[float, float], step_ends: list[float]) -> Timing:
    """End-to-end wall and CPU since ``began``, and the steady step time from ``step_ends``."""
    wall, cpu = _now()
    return wall - began[0], cpu - began[1], _steady(step_ends)


def _steady(step_ends: list[float]) -> float:
    """Seconds per step between the end of step ``WARM_UP_STEPS`` and the end of the last."""
    if len(step_ends) <= WARM_UP_STEPS:
        raise ValueError(f"a run needs more than {WARM_UP_STEPS} steps, got {len(step_ends)}")
    return (step_ends[-1] - step_ends[WARM_UP_STEPS - 1]) / (len(step_ends) - WARM_UP_STEPS)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Send stdout and stderr (prints, log lines, progress bars) to /dev/null."""
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield


def _hand_loop(work: Workload, steps: int, bar: bool, shortcuts: bool = False) -> Timing:
    """The same work as the Trainer, written out: shuffled loader, AdamW, schedule, clip, log.

    As written idiomatically by default. With ``shortcuts`` it takes the two the Trainer takes:
    batches read straight from the loader's batch sampler instead of through its iterator, and
    the parameters listed once per step for clipping and zeroing the gradients instead of
    ``model.parameters()`` and ``model.zero_grad()`` walking the module tree each.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(work.seed)
    model = Classifier(work)
    began = _now()
    loader = DataLoader(
        BatchList(work),
        batch_size=1,
        shuffle=True,
        collate_fn=unwrap,
        generator=torch.Generator().manual_seed(work.seed),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=work.learning_rate, weight_decay=0.0, fused=work.fused_adamw
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    progress = tqdm(total=steps, dynamic_ncols=True) if bar else None
    model.train()
    step = 0
    step_ends: list[float] = []
    while step < steps:
        for batch in _read_sampler(loader) if shortcuts else loader:
            loss = model(**batch)["loss"]
            loss.backward()
            params = list(model.parameters()) if shortcuts else model.parameters()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, work.max_grad_norm)
            optimizer.step()
            learning_rate = scheduler.get_last_lr()[0]
            scheduler.step()
            if shortcuts:
                for param in params:
                    param.grad = None
            else:
                model.zero_grad(set_to_none=True)
            step += 1
            logs = {
                "loss": loss.item(),
                "grad_norm": grad_norm.item(),
                "learning_rate": learning_rate,
                "epoch": step / len(loader),
            }
            text = {k: f"{v:.4g}" for k, v in logs.items()}
            if progress is not None:
                progress.update(1)
                progress.write(str(text))
            else:
                print(text)
            step_ends.append(time.time())
            if step >= steps:
                break
    if progress is not None:
        progress.close()
    return _since(began, step_ends)


def _read_sampler(loader: DataLoader[Any]) -> Iterator[Any]:
    """``loader``'s batches without its iterator: the same indices, fetch and collate (without
    the base-seed draw the Trainer makes once per epoch, a few microseconds per 32 steps)."""
    dataset, collate, batch_sampler = loader.dataset, loader.collate_fn, loader.batch_sampler
    assert batch_sampler is not None  # batch_size=1: auto-batching
    for indices in batch_sampler:
        yield collate([dataset[i] for i in indices])


def train_journaled(
    work: Workload,
    steps: int,
    workdir: Path,
    *,
    logging_steps: int = 1,
    bar: bool = False,
    use_cpu: bool = True,
) -> tuple[Any, list[Any], tuple[float, float]]:
    """``Trainer.train()`` as it runs by default, in a fresh output directory under ``workdir``.

    Returns the trainer, the events of its run's journal (their times are when things happened
    on the training thread) and the clocks read just before ``train()``.
    """
    from trainbus.bus._journal import JournalReader
    from trainbus.trainer import Trainer

    torch.manual_seed(work.seed)
    output_dir = Path(tempfile.mkdtemp(prefix="trainbus-", dir=workdir))
    args = bench_args(
        work,
        output_dir,
        max_steps=steps,
        logging_steps=logging_steps,
        disable_tqdm=not bar,
        use_cpu=use_cpu,
    )
    trainer = Trainer(Classifier(work), args, data_collator=unwrap, train_dataset=BatchList(work))
    began = _now()
    trainer.train()
    (journal,) = output_dir.glob("trainbus/*/journal")
    return trainer, JournalReader(journal).read_from(), began


def _trainbus(work: Workload, steps: int, bar: bool, workdir: Path) -> Timing:
    """As ``train()`` runs by default: a run directory whose journal gives the step times."""
    from trainbus.bus._events import StepEnd

    _, events, began = train_journaled(work, steps, workdir, bar=bar)
    return _since(began, [e.time for e in events if isinstance(e, StepEnd)])


def _transformers(work: Workload, steps: int, workdir: Path) -> Timing:
    import transformers

    torch.manual_seed(work.seed)
    args = bench_args(work, workdir / "hf", max_steps=steps, library="transformers")
    step_ends: list[float] = []

    class StepClock(transformers.TrainerCallback):  # type: ignore[misc]  # untyped base
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            step_ends.append(time.time())

    trainer = transformers.Trainer(
        model=Classifier(work),
        args=args,
        train_dataset=BatchList(work),
        data_collator=unwrap,
        callbacks=[StepClock()],
    )
    began = _now()
    trainer.train()
    return _since(began, step_ends)


def _contenders(work: Workload, steps: int, workdir: Path) -> dict[str, Callable[[], Timing]]:
    found: dict[str, Callable[[], Timing]] = {
        "hand loop": lambda: _hand_loop(work, steps, bar=False),
        "trainbus": lambda: _trainbus(work, steps, False, workdir),
        "hand loop, shortcuts": lambda: _hand_loop(work, steps, bar=False, shortcuts=True),
        "hand loop + tqdm": lambda: _hand_loop(work, steps, bar=True),
        "trainbus + tqdm": lambda: _trainbus(work, steps, True, workdir),
    }
    try:
        import accelerate  # noqa: F401  (transformers.Trainer needs it)
        import transformers  # noqa: F401
    except ImportError:
        print("transformers/accelerate missing: transformers.Trainer not measured", file=sys.stderr)
    else:
        found["transformers"] = lambda: _transformers(work, steps, workdir)
    return found


def _ratio(times: dict[str, list[Timing]], a: str, b: str, which: int = 0) -> float | None:
    """Median over rounds of ``a``'s time over ``b``'s in the same round (0 wall, 1 CPU).

    The two ran back to back in every round, so each ratio saw about the same background load;
    the median of the paired ratios is steadier than a ratio of two medians on a shared machine.
    """
    if a not in times or b not in times:
        return None
    return median([x[which] / y[which] for x, y in zip(times[a], times[b], strict=True)])


def _best_ratio(times: dict[str, list[Timing]], a: str, b: str) -> float | None:
    """``a``'s best steady time per step over ``b``'s (each contender's fastest run)."""
    if a not in times or b not in times:
        return None
    return min(t[2] for t in times[a]) / min(t[2] for t in times[b])


def _headline(
    name: str, value: float | None, *, faster: bool = False, target: bool = True
) -> Headline:
    if not target:
        return Headline(name, value, "x", "-", None)
    if faster:
        return Headline(
            name, value, "x", "> 1 (trainbus faster)", None if value is None else value > 1
        )
    wanted = f"<= {TARGET_OVERHEAD}"
    return Headline(name, value, "x", wanted, None if value is None else value <= TARGET_OVERHEAD)


def _measure(steps: int, rounds: int) -> dict[str, list[Timing]]:
    work = Workload()
    torch.set_num_threads(work.threads)
    times: dict[str, list[Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        contenders = _contenders(work, steps, Path(tmp))
        with _silenced():
            for fn in contenders.values():  # warm-up: imports, allocator, first-call costs
                fn()
        for name in abab_order(list(contenders), rounds):
            with _silenced():
                times.setdefault(name, []).append(contenders[name]())
    return times


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "fewer steps and rounds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per contender")
    options = parser.parse_args(argv)
    steps = options.steps or (60 if options.quick else 100)
    rounds = options.rounds or (3 if options.quick else 41)
    times = _measure(steps, rounds)
    rows = [
        {
            "contender": name,
            "wall_median_s": median([t[0] for t in values]),
            "wall_ms_per_step": 1000 * median([t[0] for t in values]) / steps,
            "cpu_ms_per_step": 1000 * median([t[1] for t in values]) / steps,
            "steady_ms_per_step": 1000 * median([t[2] for t in values]),
            "steady_best_ms": 1000 * min(t[2] for t in values),
            "fixed_ms": 1000 * median([t[0] - t[2] * steps for t in values]),
            "wall_min_s": min(t[0] for t in values),
            "wall_max_s": max(t[0] for t in values),
            "runs": len(values),
        }
        for name, values in times.items()
    ]
    steady = "time per step, steady state (after the first 10 steps)"
    best = f"best of {rounds} runs each"
    paired = f"median of {rounds} paired ratios"
    headline = [
        _headline(
            f"trainbus / hand loop, {steady}, {best}",
            _best_ratio(times, "trainbus", "hand loop"),
        ),
        _headline(
            f"trainbus / hand loop with progress bars, {steady}, {best}",
            _best_ratio(times, "trainbus + tqdm", "hand loop + tqdm"),
        ),
        _headline(
            f"trainbus / hand loop, {steady}, {paired}",
            _ratio(times, "trainbus", "hand loop", 2),
            target=False,
        ),
        _headline(
            f"trainbus / hand loop with progress bars, {steady}, {paired}",
            _ratio(times, "trainbus + tqdm", "hand loop + tqdm", 2),
            target=False,
        ),
        _headline(
            f"hand loop taking the Trainer's two shortcuts / hand loop, {steady}, {best}",
            _best_ratio(times, "hand loop, shortcuts", "hand loop"),
            target=False,
        ),
        _headline(
            f"trainbus / hand loop taking the Trainer's two shortcuts (everything else the "
            f"Trainer does), {steady}, {best}",
            _best_ratio(times, "trainbus", "hand loop, shortcuts"),
            target=False,
        ),
        _headline(
            f"trainbus / hand loop taking the Trainer's two shortcuts, {steady}, {paired}",
            _ratio(times, "trainbus", "hand loop, shortcuts", 2),
            target=False,
        ),
        _headline(
            "trainbus / hand loop, end-to-end wall (start-up and teardown included)",
            _ratio(times, "trainbus", "hand loop"),
            target=False,
        ),
        _headline(
            "trainbus / hand loop, end-to-end process CPU",
            _ratio(times, "trainbus", "hand loop", 1),
            target=False,
        ),
        _headline(
            f"transformers.Trainer / trainbus, {steady}",
            _ratio(times, "transformers", "trainbus", 2),
            faster=True,
        ),
    ]
    print(format_table(rows))
    print()
    print(
        format_table([{"figure": h.name, "value": h.value, "target": h.target} for h in headline])
    )
    path = write_result(
        "trainer",
        quick=options.quick,
        headline=headline,
        tables={"time": rows},
        extra={
            "workload": Workload().describe(),
            "steps": steps,
            "rounds": rounds,
            "raw_seconds": {name: [list(t) for t in values] for name, values in times.items()},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
