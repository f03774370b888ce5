"""Two CPU ranks under ``torchrun`` (gloo): no rank-local decision reaches a collective.

A callback that raises a control flag on one rank only, in any hook, and ``save_strategy="best"``
with a metric that differs between ranks, must leave every rank on the same path: the same
steps, evaluations and checkpoints, and the same weights. The reference is one process training
the same samples in batches twice as large with the flag raised there: the agreed job must do
exactly what that process does. Each run is bounded far below the process group's timeout, so a
deadlock fails the test instead of hanging it.

The worker half runs inside ``torchrun`` (``python -m torch.distributed.run ... -m
tests.trainer.test_distributed_control OUT``): it reads ``OUT/plan.json`` (which cases to run, or
which failure to cause), runs each case in its own output directory and writes what each rank
saw to ``OUT/<case>/rank<r>.json``. Several cases share one launch, since a launch costs seconds.
"""

from __future__ import annotations

import json
import os
import signal
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

MODULE = "tests.trainer.test_distributed_control"
GUARD_S = 240
"""The hang guard of a launch of many cases: far below the process group's 1800 s timeout."""
FAIL_GUARD_S = 90
"""The hang guard of a launch that must fail: a dead or raising rank ends the job well inside."""

HOOKS = (
    "on_epoch_begin",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_epoch_end",
)
FLAGS = ("should_save", "should_evaluate", "should_training_stop")
CASES = [f"{hook}.{flag}" for hook in HOOKS for flag in FLAGS] + [
    "on_substep_end.should_epoch_stop",
    "on_step_end.should_epoch_stop",
    "on_step_begin.should_log",
    "best",
]


COUNTS = [
    (1, None, 1),
    (4, None, 1),
    (4, "on_step_begin", 2),
    (4, "on_substep_end", 4),
]
"""(gradient_accumulation_steps, a hook a callback listens to, collectives per update besides
DDP's): one agreement per update, plus one after each micro-batch whose flags are read."""


def _case_arguments(out: str, case: str, batch_size: int) -> Any:
    from trainbus.trainer import TrainingArguments

    best = case == "best"
    return TrainingArguments(
        output_dir=out,
        max_steps=6,  # 16 samples, 8 per update (2 ranks x 2, or 4; GA=2): 3 epochs
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=1 if best else 3,
        save_strategy="best" if best else "steps",
        save_steps=4,
        metric_for_best_model="score" if best else None,
        include_num_input_tokens_seen="all",  # summed over ranks per window: must match too
        greater_is_better=True if best else None,
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )


def _raise_once(hook: str, flag: str, raising: bool) -> Any:
    """A callback whose ``hook`` raises ``flag`` once, at step 2 or later, when ``raising``."""
    from trainbus.trainer import TrainerCallback

    def method(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if raising and not self.fired and state.global_step >= 2:
            self.fired = True
            setattr(control, flag, True)

    callback_class = type("RaiseOnce", (TrainerCallback,), {hook: method, "fired": False})
    return callback_class()


def _recorder() -> Any:
    """A callback noting the steps of every evaluation, save and log entry."""
    from trainbus.trainer import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.seen: dict[str, list[int]] = {"evaluate": [], "save": [], "log": []}

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seen["evaluate"].append(state.global_step)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seen["save"].append(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seen["log"].append(state.global_step)

    return Recorder()


def run_case(out: str, case: str, *, batch_size: int, raising: bool, rank: int) -> dict[str, Any]:
    """Train ``case`` into ``out``; what this rank saw.

    ``raising``: this rank raises the case's flag (the other ranks do not). In the ``"best"``
    case each rank's ``compute_metrics`` returns its own score: rising with the step on rank 0,
    falling on the others, so only rank 0 sees a new best at every evaluation.
    """
    from trainbus.trainer import Trainer
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    class Regressor(TinyRegressor):
        main_input_name = "x"  # its elements count as input tokens

    callbacks = [_recorder()]
    trainer: Any = None

    def score(prediction: Any) -> dict[str, float]:
        step = float(trainer.state.global_step)
        return {"score": step if rank == 0 else -step}

    if case != "best":
        hook, flag = case.split(".")
        callbacks.append(_raise_once(hook, flag, raising))
    torch.manual_seed(0)
    trainer = Trainer(
        Regressor(dropout=0.0),
        _case_arguments(out, case, batch_size),
        train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(8, seed=1),
        compute_metrics=score if case == "best" else None,
        callbacks=callbacks,
        launcher=LocalLauncher(),
    )
    output = trainer.train()
    return {
        "global_step": output.global_step,
        "tokens": trainer.state.num_input_tokens_seen,
        **callbacks[0].seen,
        "checkpoints": sorted(p.name for p in Path(out).glob("checkpoint-*")),
        "best": trainer.state.best_model_checkpoint,
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }


def count_collectives(out: str, ga: int, *, listen: str | None) -> dict[str, list[int]]:
    """Train 4 updates at ``gradient_accumulation_steps=ga`` (no logs, evaluations or saves);
    the collectives of each update after the first: DDP's gradient buckets, and the others.
    ``listen``: a hook a callback listens to (doing nothing), or ``None``."""
    from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import CollectiveCounter, RegressionDataset, TinyRegressor

    counter = CollectiveCounter()

    def nothing(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pass

    args = TrainingArguments(
        output_dir=out,
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ga,
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    callbacks = [counter.callback]
    if listen is not None:
        callbacks.append(type("Listen", (TrainerCallback,), {listen: nothing})())
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(64),
        callbacks=callbacks,
        launcher=LocalLauncher(),
    )
    with counter.counting(trainer):
        trainer.train()
    return counter.per_update()


def _fail(out: str, how: str, rank: int) -> None:
    """Make rank 1 fail ``how``: raise at step 2, kill itself at step 2, or start with a training
    set of another length than rank 0's."""
    from trainbus.trainer import Trainer, TrainerCallback, TrainingArguments
    from trainbus.trainer._launcher import LocalLauncher
    from trainbus.trainer.testing import RegressionDataset, TinyRegressor

    class Fail(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if rank == 1 and state.global_step == 2:
                if how == "raise":
                    raise RuntimeError("rank 1 raised on purpose at step 2")
                os.kill(os.getpid(), signal.SIGKILL)

    args = TrainingArguments(
        output_dir=out,
        max_steps=100_000,  # the other rank must not simply finish
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
    )
    length = 18 if how == "disagree" and rank == 1 else 16
    trainer = Trainer(
        TinyRegressor(dropout=0.0),
        args,
        train_dataset=RegressionDataset(length),
        callbacks=[Fail()],
        launcher=LocalLauncher(),
    )
    trainer.train()


def _worker(out: str) -> None:
    rank = int(os.environ["RANK"])
    plan = json.loads(Path(out, "plan.json").read_text())
    if "fail" in plan:
        _fail(str(Path(out, "run")), plan["fail"], rank)
        return
    for case in plan["cases"]:
        directory = Path(out, case.replace(".", "-"))
        report = run_case(str(directory), case, batch_size=2, raising=rank == 1, rank=rank)
        torch.distributed.barrier()  # rank 0 lists the checkpoints once both have finished
        directory.mkdir(parents=True, exist_ok=True)  # a run stopped before any save made none
        report["checkpoints"] = sorted(p.name for p in directory.glob("checkpoint-*"))
        (directory / f"rank{rank}.json").write_text(json.dumps(report))
    counted = {
        f"ga{ga}-{listen}": count_collectives(
            str(Path(out, f"count-{ga}-{listen}")), ga, listen=listen
        )
        for ga, listen in plan["counts"]
    }
    Path(out, f"counts-rank{rank}.json").write_text(json.dumps(counted))


def _launch(tmp_path: Path, plan: dict[str, Any], timeout_s: float) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return run_ranks(MODULE, tmp_path, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One launch for every case and count (each launch costs seconds of start-up)."""
    out = tmp_path_factory.mktemp("control")
    plan = {"cases": CASES, "counts": [[ga, hook] for ga, hook, _ in COUNTS]}
    done = _launch(out, plan, GUARD_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _check_same_as_one_process(tmp_path: Path, case: str) -> None:
    directory = tmp_path / case.replace(".", "-")
    ranks = [json.loads((directory / f"rank{r}.json").read_text()) for r in (0, 1)]
    single_dir = tmp_path / "single" / case.replace(".", "-")
    single = run_case(str(single_dir), case, batch_size=4, raising=True, rank=0)
    same = ("global_step", "tokens", "evaluate", "save", "log", "checkpoints")
    for key in same:
        assert ranks[0][key] == ranks[1][key] == single[key], (case, key)
    assert ranks[0]["weights"] == ranks[1]["weights"], case
    assert Path(str(ranks[0]["best"])).name == Path(str(single["best"])).name, case
    for ours, theirs in zip(ranks[0]["weights"], single["weights"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), case


def test_flags_raised_on_one_rank_are_agreed_in_every_hook(launched: Path) -> None:
    """Each (hook, flag) raised on rank 1 only, and "best" with rank-dependent metrics: both
    ranks end like one process raising the flag (or seeing rank 0's metric)."""
    for case in CASES:
        _check_same_as_one_process(launched, case)


def test_one_small_all_reduce_per_update_besides_ddp(launched: Path) -> None:
    """At GA=1 and GA=4 an update takes DDP's gradient all-reduce and one flag all-reduce; a
    callback listening inside the window adds one agreement where its flags are read."""
    for rank in (0, 1):
        counts = json.loads((launched / f"counts-rank{rank}.json").read_text())
        for ga, hook, expected in COUNTS:
            name = f"ga{ga}-{hook}"
            assert counts[name]["ddp"] == [1, 1, 1], (rank, name)  # one bucket per update
            assert counts[name]["other"] == [expected] * 3, (rank, name)


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("raise", "rank 1 raised on purpose at step 2"),
        ("kill", "SIGKILL"),
        ("disagree", "the ranks of this job disagree on"),
    ],
)
def test_a_failing_or_disagreeing_rank_ends_the_job_quickly(
    tmp_path: Path, how: str, named: str
) -> None:
    """A rank that raises, is killed, or runs another plan ends the job inside the guard (no
    wait for the process group's timeout), non-zero, with the cause in its output."""
    done = _launch(tmp_path, {"fail": how}, FAIL_GUARD_S)
    assert done.returncode != 0
    assert named in done.stderr
    if how in ("raise", "kill"):  # the survivor says where it was and why it stopped
        assert "DistributedError: rank 0 of 2 failed" in done.stderr
    if how == "disagree":  # both ranks refuse, each naming the field and both values
        lines = [line for line in done.stderr.splitlines() if "ConfigurationError" in line]
        assert any("[rank0]" in line for line in lines) and any("[rank1]" in line for line in lines)
        assert "train_dataset_length: rank 0 has 16, rank 1 has 18" in done.stderr


if __name__ == "__main__":
    _worker(sys.argv[1])
