"""Event order of whole runs, callback side and bus side, against the spec (HF §2.3-§2.5, §6).

``expected_events`` re-derives the sequence from the spec's text alone (it shares no code with
the trainer): per update ``step_begin``, ``substep_end`` for all but the last micro-batch,
``pre_optimizer_step``, ``optimizer_step``, ``step_end``, then log -> evaluate -> save as the
default flow's rules say; ``epoch_end`` after every epoch, even one cut short.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.recording import StopAt, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._events import (
    RUN_EVENT_TYPES,
    Artifact,
    Log,
    OptimizerStep,
    PreOptimizerStep,
    RunFinished,
    RunStarted,
    Save,
    StepBegin,
    StepEnd,
)
from trainbus.bus._journal import JournalReader
from trainbus.trainer import TrainerCallback


@dataclass(frozen=True)
class Case:
    """One row of the matrix: Trainer arguments plus what the expected builder needs to know."""

    name: str
    args: dict[str, Any]
    train_size: int = 16
    stop_at: int | None = None


EVAL_BATCHES = 2  # eval_size 8 / batch 4
RUN_DEFAULTS = {"logging_steps": 1, "num_train_epochs": 1, "save_strategy": "no"}  # make_run's


def _flow_step(a: dict[str, Any], step: int, max_steps: int) -> tuple[bool, bool, bool]:
    """DefaultFlowCallback.on_step_end as spec §6.1 states it."""
    log_steps = _absolute(a.get("logging_steps", 500), max_steps)
    eval_steps = _absolute(a.get("eval_steps") or a.get("logging_steps", 500), max_steps)
    save_steps = _absolute(a.get("save_steps", 500), max_steps)
    delay = a.get("eval_delay", 0)
    log = (step == 1 and a.get("logging_first_step", False)) or (
        a.get("logging_strategy", "steps") == "steps" and step % log_steps == 0
    )
    eval_by_steps = a.get("eval_strategy", "no") == "steps" and delay <= step
    evaluate = eval_by_steps and step % eval_steps == 0
    save = a.get("save_strategy", "steps") == "steps" and step % save_steps == 0
    if step >= max_steps:
        evaluate = evaluate or eval_by_steps
        save = save or a.get("save_strategy", "steps") == "steps"
    return log, evaluate, save


def _absolute(value: float, max_steps: int) -> int:
    return math.ceil(max_steps * value) if value < 1 else int(value)


def expected_events(case: Case) -> list[str]:
    """The callback sequence spec §2.3-§2.5 prescribes for ``case`` (batch size 4)."""
    a = {**RUN_DEFAULTS, **case.args}
    ga = a.get("gradient_accumulation_steps", 1)
    batches = math.ceil(case.train_size / 4)
    per_epoch = math.ceil(batches / ga)
    if a.get("max_steps", -1) > 0:
        max_steps = a["max_steps"]
        epochs = math.ceil(max_steps / per_epoch)
    else:
        max_steps = math.ceil(a.get("num_train_epochs", 1) * per_epoch)
        epochs = math.ceil(a.get("num_train_epochs", 1))
    evaluation = ["prediction_step"] * EVAL_BATCHES + ["log", "evaluate"]
    out = ["init_end", "train_begin"]
    if a.get("eval_on_start"):
        out += evaluation
    step = last_logged = 0
    stop = False

    def log_save_evaluate(log: bool, evaluate: bool, save: bool) -> None:
        nonlocal last_logged
        if log and step > last_logged:
            out.append("log")
            last_logged = step
        if evaluate:
            out.extend(evaluation)
        if save:
            out.append("save")

    for epoch in range(epochs):
        out.append("epoch_begin")
        for update in range(per_epoch):
            window = min(ga, batches - update * ga)
            out += ["step_begin", *["substep_end"] * (window - 1)]
            out += ["pre_optimizer_step", "optimizer_step", "step_end"]
            step += 1
            stop = step >= max_steps or step == case.stop_at
            log_save_evaluate(*_flow_step(a, step, max_steps))
            if stop:
                break
        out.append("epoch_end")
        progress = epoch + (min((update + 1) * ga, batches)) / batches
        log_save_evaluate(
            a.get("logging_strategy") == "epoch",
            a.get("eval_strategy") == "epoch" and a.get("eval_delay", 0) <= progress,
            a.get("save_strategy") == "epoch",
        )
        if stop:
            break
    return [*out, "log", "train_end"]


CASES = [
    Case("ga1-log-every-step", {"gradient_accumulation_steps": 1}),
    Case("ga3", {"gradient_accumulation_steps": 3, "num_train_epochs": 2}, train_size=24),
    Case("ga4-partial-window", {"gradient_accumulation_steps": 4, "logging_steps": 2}, 24),
    Case(
        "steps-log-eval-save",
        {
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "save_strategy": "steps",
            "save_steps": 2,
            "num_train_epochs": 2,
        },
    ),
    Case(
        "epoch-strategies",
        {
            "logging_strategy": "epoch",
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "num_train_epochs": 2,
        },
    ),
    Case("logging-off", {"logging_strategy": "no", "num_train_epochs": 2}),
    Case("logging-first-step", {"logging_steps": 3, "logging_first_step": True}),
    Case(
        "ratios",
        {
            "max_steps": 10,
            "logging_steps": 0.2,
            "eval_strategy": "steps",
            "eval_steps": 0.3,
            "save_strategy": "steps",
            "save_steps": 0.5,
        },
    ),
    Case(
        "eval-delay-steps",
        {"eval_strategy": "steps", "eval_steps": 1, "eval_delay": 3, "logging_steps": 4},
    ),
    Case(
        "eval-delay-epochs",
        {"eval_strategy": "epoch", "eval_delay": 1.5, "num_train_epochs": 3, "logging_steps": 4},
    ),
    Case("max-steps-cuts-epoch", {"max_steps": 6, "logging_steps": 4, "save_strategy": "epoch"}),
    Case(
        "final-eval-not-doubled",
        {"max_steps": 7, "eval_strategy": "steps", "eval_steps": 3, "logging_steps": 5},
    ),
    Case(
        "callback-stops-training",
        {"num_train_epochs": 3, "eval_strategy": "epoch", "logging_steps": 2},
        stop_at=5,
    ),
    Case(
        "save-total-limit-with-best-model",
        {
            "max_steps": 6,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "save_total_limit": 1,
            "load_best_model_at_end": True,
        },
    ),
    Case("eval-on-start", {"eval_on_start": True, "logging_steps": 2, "eval_strategy": "no"}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_callback_and_bus_sequences_match_the_spec(tmp_path: Path, case: Case) -> None:
    """Callbacks see exactly the spec's sequence, and the bus carries the same events in order."""
    callbacks = [StopAt(case.stop_at)] if case.stop_at else []
    run = make_run(tmp_path, train_size=case.train_size, callbacks=callbacks, **case.args)
    run.trainer.train()
    expected = expected_events(case)
    assert run.callback.events == expected
    assert run.bus_hooks() == expected
    bus = run.bus_events()
    assert isinstance(bus[0], RunStarted)
    assert isinstance(bus[-1], RunFinished)
    assert bus[-1].status == ("stopped" if case.stop_at else "completed")
    assert [e.seq for e in bus] == list(range(len(bus)))


@pytest.mark.parametrize("case", CASES[:4], ids=lambda case: case.name)
def test_bus_events_carry_the_step_and_epoch_the_callback_saw(tmp_path: Path, case: Case) -> None:
    """Each HF event on the bus has the ``global_step`` and ``epoch`` its callback call saw."""
    run = make_run(tmp_path, train_size=case.train_size, **case.args)
    run.trainer.train()
    hf_events = [e for e in run.bus_events() if not isinstance(e, RunStarted | RunFinished)]
    hf_events = [e for e in hf_events if not isinstance(e, Artifact)]
    seen = [(s.global_step, s.epoch) for s in run.callback.seen]
    assert [(e.global_step, e.epoch) for e in hf_events] == seen


def test_gradient_accumulation_of_four_gives_one_update_per_four_batches(tmp_path: Path) -> None:
    """GA 4 over 4 batches: one update, three substeps, no substep after the last batch."""
    run = make_run(tmp_path, gradient_accumulation_steps=4, logging_strategy="no")
    run.trainer.train()
    assert run.callback.events == [
        "init_end",
        "train_begin",
        "epoch_begin",
        "step_begin",
        "substep_end",
        "substep_end",
        "substep_end",
        "pre_optimizer_step",
        "optimizer_step",
        "step_end",
        "epoch_end",
        "log",
        "train_end",
    ]


def test_step_counters_move_just_before_step_end(tmp_path: Path) -> None:
    """Pre-optimizer and optimizer steps still see the previous step; step_end sees the new one."""
    run = make_run(tmp_path, logging_strategy="no", max_steps=2)
    run.trainer.train()
    seen = {(s.event, s.global_step) for s in run.callback.seen}
    assert ("pre_optimizer_step", 0) in seen and ("optimizer_step", 0) in seen
    assert ("step_end", 1) in seen and ("pre_optimizer_step", 1) in seen
    assert ("step_end", 2) in seen


def test_flags_are_reset_before_the_hooks_that_own_them(tmp_path: Path) -> None:
    """on_log, on_evaluate and on_save see their own flag already cleared (HF pre-resets)."""
    run = make_run(
        tmp_path,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    run.trainer.train()
    for seen in run.callback.seen:
        stop, _, save, evaluate, log = seen.flags
        if seen.event == "log":
            assert not log
        if seen.event == "evaluate":
            assert not evaluate
        if seen.event == "save":
            assert not save
        if seen.event == "step_begin":
            assert not (save or evaluate or log)
        if seen.event == "train_begin":
            assert not stop


def test_log_events_carry_exactly_what_on_log_received(tmp_path: Path) -> None:
    """Training, evaluation and summary logs: same dicts on the bus as in ``on_log``, HF's keys."""
    run = make_run(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2)
    run.trainer.train()
    on_log = [s.payload or {} for s in run.callback.seen if s.event == "log"]
    on_bus = [e.logs for e in run.bus_events() if isinstance(e, Log)]
    assert on_bus == on_log
    train_log, _, eval_log, summary = on_log
    assert list(train_log) == ["loss", "grad_norm", "learning_rate", "epoch"]
    assert list(eval_log) == [
        "eval_loss",
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
        "epoch",
    ]
    assert list(summary) == [
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "total_flos",
        "train_loss",
        "epoch",
    ]
    history = run.trainer.state.log_history
    assert [entry["step"] for entry in history] == [1, 2, 2, 2]
    assert all("step" not in logs for logs in on_log)


def test_every_checkpoint_publishes_save_then_artifact(tmp_path: Path) -> None:
    """A checkpoint is announced by ``Save`` with its directory, followed by its artifact."""
    run = make_run(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=4)
    run.trainer.train()
    events = run.bus_events()
    saves = [i for i, e in enumerate(events) if isinstance(e, Save)]
    assert len(saves) == 2
    for index in saves:
        save, artifact = events[index], events[index + 1]
        assert isinstance(save, Save) and isinstance(artifact, Artifact)
        assert artifact.kind == "checkpoint"
        assert artifact.path == save.checkpoint_dir
        assert Path(artifact.path).name == f"checkpoint-{save.global_step}"


class LogsAtOptimizerStep(TrainerCallback):
    """Listens to one mid-step hook only, and publishes from it (``trainer.log``)."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.log({"from_callback": float(state.global_step)})


def test_per_step_events_reach_the_bus_before_anything_a_callback_publishes(
    tmp_path: Path,
) -> None:
    """The per-step events are published in batches (stamped as they happen, published before
    any hook runs); with hooks unheard in between, the bus order and times are still the order
    things happened: a Log from on_optimizer_step lands after OptimizerStep, before StepEnd."""
    run = make_run(tmp_path, max_steps=2, logging_strategy="no")
    run.trainer.remove_callback(run.callback)  # nobody listens to step_begin/pre_optimizer_step
    logger = LogsAtOptimizerStep()
    logger.trainer = run.trainer
    run.trainer.add_callback(logger)
    run.trainer.train()
    events = run.bus_events()
    steps = [e for e in events if not isinstance(e, RUN_EVENT_TYPES)]
    tags = [type(e).__struct_config__.tag for e in steps]  # type: ignore[misc]
    per_step = ["step_begin", "pre_optimizer_step", "optimizer_step", "log", "step_end"]
    assert tags == [
        "init_end",
        "train_begin",
        "epoch_begin",
        *per_step,
        *per_step,
        "epoch_end",
        "log",
        "train_end",
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    times = [e.time for e in events]
    assert times == sorted(times)
    logged = [e for e in steps if isinstance(e, Log) and "from_callback" in e.logs]
    assert [e.global_step for e in logged] == [0, 1]


class SlowSGD(torch.optim.SGD):
    """SGD whose step takes a measurable time, and can be told to fail at one step."""

    def __init__(self, params: Any, fail_at: int | None = None) -> None:
        super().__init__(params, lr=0.01)
        self.fail_at = fail_at
        self.calls = 0

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]  # torch's overloads
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("optimizer exploded")
        time.sleep(0.005)
        return super().step(closure)


def _unheard_run(tmp_path: Path, **overrides: Any) -> Any:
    """A run with no callback on the mid-step hooks, so their events are published together."""
    run = make_run(tmp_path, logging_strategy="no", **overrides)
    run.trainer.remove_callback(run.callback)
    return run


def test_events_published_together_keep_their_own_step_and_time(tmp_path: Path) -> None:
    """Stamped when they happen: OptimizerStep is 5 ms (the slow optimizer) after
    PreOptimizerStep, and each event carries the global_step and epoch of its moment."""
    run = _unheard_run(tmp_path, max_steps=2)
    run.trainer.optimizer = SlowSGD(run.trainer.model.parameters())
    run.trainer.train()
    events = [e for e in run.bus_events() if not isinstance(e, RUN_EVENT_TYPES)]
    for step in (1, 2):
        begin, pre, opt, end = (
            next(e for e in events if isinstance(e, kind) and e.global_step == global_step)
            for kind, global_step in (
                (StepBegin, step - 1),
                (PreOptimizerStep, step - 1),
                (OptimizerStep, step - 1),
                (StepEnd, step),
            )
        )
        assert begin.seq < pre.seq < opt.seq < end.seq
        assert opt.time - pre.time >= 0.004  # not stamped when published
        assert begin.epoch == pre.epoch == opt.epoch == (step - 1) / 4
        assert end.epoch == step / 4


def test_a_step_that_fails_still_publishes_what_happened_before_the_failure(
    tmp_path: Path,
) -> None:
    """The optimizer raises at step 2: the bus has StepBegin and PreOptimizerStep of that step,
    then RunFinished(failed); no OptimizerStep or StepEnd for it."""
    run = _unheard_run(tmp_path, max_steps=3)
    run.trainer.optimizer = SlowSGD(run.trainer.model.parameters(), fail_at=2)
    with pytest.raises(RuntimeError, match="optimizer exploded"):
        run.trainer.train()
    last = run.bus_events()[-3:]
    assert [type(e) for e in last] == [StepBegin, PreOptimizerStep, RunFinished]
    assert [e.global_step for e in last[:2]] == [1, 1]
    assert isinstance(last[2], RunFinished) and last[2].status == "failed"


class JournalAtOptimizerStep(TrainerCallback):
    """An ``async def`` hook that reads the run's journal: the barrier drained the bus first."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.seen: list[list[tuple[str, int]]] = []

    async def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        bus = self.trainer._bus  # the test launcher's bus keeps its journal in a temporary dir
        tail = list(JournalReader(Path(bus._tmpdir) / "journal.tbj").read_from())[-3:]
        self.seen.append([(type(e).__struct_config__.tag, e.global_step) for e in tail])


def test_async_hooks_find_the_events_before_them_in_the_journal(tmp_path: Path) -> None:
    """Mid-step events stamped but not yet published are published before any hook runs: an
    async on_optimizer_step finds StepBegin, PreOptimizerStep and OptimizerStep journaled."""
    run = _unheard_run(tmp_path, max_steps=2)
    hook = JournalAtOptimizerStep(run.trainer)
    run.trainer.add_callback(hook)
    run.trainer.train()
    assert hook.seen == [
        [("step_begin", s), ("pre_optimizer_step", s), ("optimizer_step", s)] for s in (0, 1)
    ]
