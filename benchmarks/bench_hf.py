"""A transformers model trained by ``transformers.Trainer`` and by trainbus's, same arguments.

The question a user coming from transformers asks: if I change my one import line, is my
training as fast, and is it the same training? Both trainers train the same tiny BERT
(``BertForSequenceClassification`` from a small ``BertConfig`` with its default dropout) on the
same pre-tokenized fixed-length rows, fp32 on the CPU with one torch thread, from one dictionary
of ``TrainingArguments`` fields handed to each library's class:

* ``transformers``: ``transformers.Trainer`` with ``report_to="none"``;
* ``trainbus``: ``trainbus.Trainer`` as ``train()`` runs by default with the same arguments:
  every event published on a bus that journals it in the run directory (no sink).

Two logging conditions: every step (``bench_trainer``'s load) and every 10 steps. The method is
``bench_trainer``'s: runs alternate (A B, B A, ...) after one untimed run of each; each run's
figure is its steady-state time per step (from the end of step 10 to the end of the last, read
from the journal's ``StepEnd`` times for trainbus and from a step-end callback for transformers),
reported as steps/s. The headline is the median over rounds of the paired ratio (trainbus steps/s
over transformers' in the same round), with the ratio of each contender's best run beside it.

Apples to apples, checked before any figure is written (otherwise the benchmark names the
difference and exits with status 1 without writing a result):

every timed round's two runs (default dropout) must have taken the same number of optimizer
steps and logged the same losses, entry for entry, and the same mean training loss
(``TrainOutput.training_loss``), within ``EXACT_TOLERANCE`` (the differential tests' fp32
bound): same rows in the same order, same optimizer, schedule, clipping and logging, and the
same dropout masks, since both trainers draw the global RNG at the same points.

Run: ``python -m benchmarks.bench_hf [--quick]``; writes ``benchmarks/results/hf.json``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch

from benchmarks._common import (
    Headline,
    abab_order,
    bench_mode,
    bench_parser,
    format_table,
    median,
    write_result,
)
from benchmarks.bench_trainer import WARM_UP_STEPS, Timing, _now, _silenced, _steady

LOGGING_STEPS: Final = (1, 10)
"""The logging conditions: every step, as ``bench_trainer``, and every 10 steps."""
EXACT_TOLERANCE: Final = 1e-5
"""Largest relative difference between two runs' losses (each entry, and the mean)."""
PLAN: Final = {"full": (100, 21), "quick": (60, 3), "smoke": (WARM_UP_STEPS + 5, 1)}
"""Optimizer steps per run and rounds per condition, by mode."""

Library = Literal["transformers", "trainbus"]
CONTENDERS: Final[tuple[Library, ...]] = ("transformers", "trainbus")


@dataclass(frozen=True)
class TinyBert:
    """The model, the rows and the training arguments both trainers get."""

    vocab_size: int = 1024
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    seq_len: int = 32
    rows: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-3
    """Higher than the 5e-5 default so the loss falls within a short run: the loss check then
    compares a learning curve, not two runs sitting at ln 2."""
    dropout: float | None = None
    """Hidden and attention dropout; ``None`` keeps ``BertConfig``'s default (0.1)."""
    seed: int = 1234
    threads: int = 1

    def describe(self) -> str:
        """One line for RESULTS.md."""
        return (
            f"BertForSequenceClassification, {self.layers} layers, hidden {self.hidden_size}, "
            f"{self.heads} heads, vocabulary {self.vocab_size}, default dropout; "
            f"{self.rows} pre-tokenized rows of {self.seq_len} tokens, batch {self.batch_size}, "
            f"fp32, CPU, torch threads {self.threads}; default optimizer and linear schedule, "
            f"learning rate {self.learning_rate}"
        )

    def model(self) -> Any:
        """A fresh model, initialised from ``seed`` so both contenders start from one set of
        weights."""
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=4 * self.hidden_size,
            max_position_embeddings=self.seq_len,
            num_labels=2,
        )
        if self.dropout is not None:
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = self.dropout
        torch.manual_seed(self.seed)
        return BertForSequenceClassification(config)

    def dataset(self) -> list[dict[str, Any]]:
        """Rows as a tokenizer leaves them, padded to one length; the label is whether the
        first token is in the lower half of the vocabulary, so the model can learn it."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        ids = torch.randint(5, self.vocab_size, (self.rows, self.seq_len), generator=generator)
        mask = torch.ones(self.seq_len, dtype=torch.long)
        half = self.vocab_size // 2
        return [
            {"input_ids": row, "attention_mask": mask, "labels": int(row[0] < half)} for row in ids
        ]

    def arguments(self, output_dir: Path, steps: int, logging_steps: int) -> dict[str, Any]:
        """The one set of ``TrainingArguments`` fields both trainers are built from."""
        return {
            "output_dir": str(output_dir),
            "max_steps": steps,
            "per_device_train_batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "logging_steps": logging_steps,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Run:
    """One training run: its timing and what it trained."""

    timing: Timing
    global_step: int
    training_loss: float
    losses: tuple[float, ...]


def _train_transformers(bert: TinyBert, steps: int, logging_steps: int, workdir: Path) -> Run:
    import transformers

    step_ends: list[float] = []

    class StepClock(transformers.TrainerCallback):  # type: ignore[misc]  # untyped base
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            step_ends.append(time.time())

    output_dir = Path(tempfile.mkdtemp(prefix="hf-", dir=workdir))
    trainer = transformers.Trainer(
        model=bert.model(),
        args=transformers.TrainingArguments(**bert.arguments(output_dir, steps, logging_steps)),
        train_dataset=bert.dataset(),
        callbacks=[StepClock()],
    )
    began = _now()
    output = trainer.train()
    ended = _now()
    return _run(_timing(began, ended, step_ends), output, trainer.state.log_history)


def _train_trainbus(bert: TinyBert, steps: int, logging_steps: int, workdir: Path) -> Run:
    from trainbus import Trainer, TrainingArguments
    from trainbus.bus._events import StepEnd
    from trainbus.bus._journal import JournalReader

    output_dir = Path(tempfile.mkdtemp(prefix="trainbus-", dir=workdir))
    trainer = Trainer(
        model=bert.model(),
        args=TrainingArguments(**bert.arguments(output_dir, steps, logging_steps)),
        train_dataset=bert.dataset(),
    )
    began = _now()
    output = trainer.train()
    ended = _now()
    (journal,) = output_dir.glob("trainbus/*/journal")
    step_ends = [e.time for e in JournalReader(journal).read_from() if isinstance(e, StepEnd)]
    return _run(_timing(began, ended, step_ends), output, trainer.state.log_history)


def _timing(
    began: tuple[float, float], ended: tuple[float, float], step_ends: list[float]
) -> Timing:
    """End-to-end wall and CPU of the ``train()`` call, and its steady time per step."""
    return ended[0] - began[0], ended[1] - began[1], _steady(step_ends)


def _run(timing: Timing, output: Any, log_history: Sequence[dict[str, Any]]) -> Run:
    losses = tuple(float(e["loss"]) for e in log_history if "loss" in e)
    return Run(timing, int(output.global_step), float(output.training_loss), losses)


TRAIN: Final[dict[Library, Callable[[TinyBert, int, int, Path], Run]]] = {
    "transformers": _train_transformers,
    "trainbus": _train_trainbus,
}


def disagreement(
    reference: Run, ours: Run, mean_tolerance: float, entry_tolerance: float | None = None
) -> str | None:
    """Why two runs did not train the same thing, or ``None`` when they did.

    Args:
        reference: the ``transformers.Trainer`` run.
        ours: the trainbus run.
        mean_tolerance: the largest relative difference between their mean training losses.
        entry_tolerance: when given, the largest relative difference between any two loss
            entries at the same position.
    """
    if ours.global_step != reference.global_step:
        return f"optimizer steps: trainbus {ours.global_step}, transformers {reference.global_step}"
    if len(ours.losses) != len(reference.losses):
        return f"loss entries: trainbus {len(ours.losses)}, transformers {len(reference.losses)}"
    pairs = [("mean loss", reference.training_loss, ours.training_loss, mean_tolerance)]
    if entry_tolerance is not None:
        pairs += [
            (f"loss entry {index + 1}", theirs, mine, entry_tolerance)
            for index, (theirs, mine) in enumerate(zip(reference.losses, ours.losses, strict=True))
        ]
    for what, theirs, mine, tolerance in pairs:
        if (
            not (math.isfinite(theirs) and math.isfinite(mine))
            or abs(mine - theirs) > abs(theirs) * tolerance
        ):
            return (
                f"{what}: trainbus {mine:.6g}, transformers {theirs:.6g} (tolerance {tolerance:g})"
            )
    return None


def _check(runs: dict[Library, list[Run]]) -> str | None:
    """Why this condition's timed runs are not the same training, or ``None``."""
    pairs = zip(runs["transformers"], runs["trainbus"], strict=True)
    for index, (reference, ours) in enumerate(pairs):
        if why := disagreement(reference, ours, EXACT_TOLERANCE, EXACT_TOLERANCE):
            return f"round {index + 1}: {why}"
    return None


def _measure(
    bert: TinyBert, steps: int, rounds: int, logging_steps: int, workdir: Path
) -> dict[Library, list[Run]]:
    with _silenced():  # warm-up: imports, allocator, first-call costs
        for name in CONTENDERS:
            TRAIN[name](bert, steps, logging_steps, workdir)
    runs: dict[Library, list[Run]] = {}
    for name in abab_order(CONTENDERS, rounds):
        with _silenced():
            runs.setdefault(name, []).append(TRAIN[name](bert, steps, logging_steps, workdir))
    return runs


def _paired(runs: dict[Library, list[Run]]) -> float:
    """Median over rounds of trainbus's steps/s over transformers' in the same round."""
    pairs = zip(runs["transformers"], runs["trainbus"], strict=True)
    return median([hf.timing[2] / ours.timing[2] for hf, ours in pairs])


def _best(runs: dict[Library, list[Run]]) -> float:
    """trainbus's best steps/s over transformers' best (each contender's fastest run)."""
    fastest = {name: min(r.timing[2] for r in runs[name]) for name in CONTENDERS}
    return fastest["transformers"] / fastest["trainbus"]


def _rows(logging_steps: int, runs: dict[Library, list[Run]], steps: int) -> list[dict[str, Any]]:
    return [
        {
            "logging_steps": logging_steps,
            "contender": name,
            "steps_per_s": 1 / median([r.timing[2] for r in values]),
            "best_steps_per_s": 1 / min(r.timing[2] for r in values),
            "steady_ms_per_step": 1000 * median([r.timing[2] for r in values]),
            "wall_ms_per_step": 1000 * median([r.timing[0] for r in values]) / steps,
            "cpu_ms_per_step": 1000 * median([r.timing[1] for r in values]) / steps,
            "fixed_ms": 1000 * median([r.timing[0] - r.timing[2] * steps for r in values]),
            "global_step": values[0].global_step,
            "loss_entries": len(values[0].losses),
            "first_loss": values[0].losses[0],
            "last_loss": values[0].losses[-1],
            "mean_loss": values[0].training_loss,
            "runs": len(values),
        }
        for name, values in runs.items()
    ]


def _headlines(logging_steps: int, runs: dict[Library, list[Run]], rounds: int) -> list[Headline]:
    figure = (
        f"trainbus / transformers.Trainer steps/s, tiny BERT, logging every {logging_steps} "
        f"step{'s' if logging_steps > 1 else ''}, steady state"
    )
    paired = _paired(runs)
    note = (
        "same arguments, same steps, the same losses entry for entry (within "
        f"{EXACT_TOLERANCE:g}, dropout on); both trainers built from one dictionary of "
        "TrainingArguments fields, trainbus journaling every event"
    )
    return [
        Headline(
            f"{figure}, median of {rounds} paired ratios",
            paired,
            "x",
            "> 1 (trainbus faster)",
            paired > 1,
            note,
        ),
        Headline(f"{figure}, best of {rounds} runs each", _best(runs), "x", "-", None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "fewer steps and rounds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per contender")
    options = parser.parse_args(argv)
    mode = bench_mode(options.quick)
    steps = options.steps or PLAN[mode][0]
    rounds = options.rounds or PLAN[mode][1]
    conditions = LOGGING_STEPS[:1] if mode == "smoke" else LOGGING_STEPS
    bert = TinyBert()
    torch.set_num_threads(bert.threads)
    rows: list[dict[str, Any]] = []
    headline: list[Headline] = []
    raw: dict[str, dict[str, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        for logging_steps in conditions:
            runs = _measure(bert, steps, rounds, logging_steps, Path(tmp))
            if why := _check(runs):
                print(
                    f"not the same training (logging every {logging_steps}): {why}; "
                    "no result written",
                    file=sys.stderr,
                )
                return 1
            rows += _rows(logging_steps, runs, steps)
            headline += _headlines(logging_steps, runs, rounds)
            raw[f"logging_steps={logging_steps}"] = {
                name: [list(r.timing) for r in values] for name, values in runs.items()
            }
    print(format_table(rows))
    print()
    print(
        format_table([{"figure": h.name, "value": h.value, "target": h.target} for h in headline])
    )
    path = write_result(
        "hf",
        quick=mode != "full",
        headline=headline,
        tables={"time": rows},
        extra={
            "workload": bert.describe(),
            "steps": steps,
            "rounds": rounds,
            "exact_tolerance": EXACT_TOLERANCE,
            "raw_seconds": raw,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
