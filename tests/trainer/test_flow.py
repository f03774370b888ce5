"""DefaultFlowCallback's decisions, checked against a plain reading of the spec (§6.1, §6.2)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._flow import DefaultFlowCallback
from trainbus.trainer._state import TrainerControl, TrainerState

FLAGS = (
    "should_training_stop",
    "should_epoch_stop",
    "should_save",
    "should_evaluate",
    "should_log",
)


@dataclass(frozen=True)
class Case:
    args: TrainingArguments
    state: TrainerState
    before: TrainerControl


interval = st.one_of(
    st.integers(min_value=1, max_value=60),
    st.floats(min_value=0.001, max_value=0.999, allow_nan=False),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Random valid arguments, a state after compute_steps, and random incoming flags."""
    strategy = st.sampled_from(["no", "steps", "epoch"])
    save_strategy = draw(st.sampled_from(["no", "steps", "epoch", "best"]))
    evaluated = st.sampled_from(["steps", "epoch"])  # 'best' needs evaluations
    args = TrainingArguments(
        logging_strategy=draw(strategy),
        logging_steps=draw(interval),
        logging_first_step=draw(st.booleans()),
        eval_strategy=draw(evaluated if save_strategy == "best" else strategy),
        eval_steps=draw(interval),
        eval_delay=draw(st.one_of(st.integers(0, 40), st.floats(0, 5, allow_nan=False))),
        save_strategy=save_strategy,
        save_steps=draw(interval),
        disable_tqdm=True,
    )
    max_steps = draw(st.integers(min_value=1, max_value=300))
    state = TrainerState(
        global_step=draw(st.integers(min_value=1, max_value=max_steps + 5)),
        epoch=draw(st.floats(min_value=0, max_value=6, allow_nan=False)),
    )
    state.compute_steps(args, max_steps)
    state.max_steps = max_steps
    before = TrainerControl(**{flag: draw(st.booleans()) for flag in FLAGS})
    return Case(args, state, before)


def expected_after_step(case: Case) -> dict[str, bool]:
    """§6.1 written out directly: each flag is raised when its table row says so, else kept."""
    a, s, step = case.args, case.state, case.state.global_step
    last = step >= s.max_steps
    raise_log = (step == 1 and a.logging_first_step) or (
        a.logging_strategy == "steps" and step % s.logging_steps == 0
    )
    raise_eval = (
        a.eval_strategy == "steps"
        and a.eval_delay <= step
        and (step % s.eval_steps == 0 or last)  # end-of-run eval, never twice
    )
    raise_save = a.save_strategy == "steps" and (step % s.save_steps == 0 or last)
    old = case.before.state()["args"]
    return {
        "should_training_stop": old["should_training_stop"] or last,
        "should_epoch_stop": old["should_epoch_stop"],
        "should_save": old["should_save"] or raise_save,
        "should_evaluate": old["should_evaluate"] or raise_eval,
        "should_log": old["should_log"] or raise_log,
    }


def expected_after_epoch(case: Case) -> dict[str, bool]:
    """§6.2 written out directly."""
    a, old = case.args, case.before.state()["args"]
    return {
        "should_training_stop": old["should_training_stop"],
        "should_epoch_stop": old["should_epoch_stop"],
        "should_save": old["should_save"] or a.save_strategy == "epoch",
        "should_evaluate": old["should_evaluate"]
        or (a.eval_strategy == "epoch" and a.eval_delay <= case.state.epoch),
        "should_log": old["should_log"] or a.logging_strategy == "epoch",
    }


def copy(control: TrainerControl) -> TrainerControl:
    return TrainerControl(**control.state()["args"])


@settings(max_examples=300, deadline=None)
@given(cases())
def test_step_end_decisions_match_the_spec(case: Case) -> None:
    """on_step_end raises exactly the flags §6.1 asks for and never lowers one."""
    control = DefaultFlowCallback().on_step_end(case.args, case.state, copy(case.before))
    assert control.state()["args"] == expected_after_step(case)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_epoch_end_decisions_match_the_spec(case: Case) -> None:
    """on_epoch_end raises exactly the flags §6.2 asks for and never lowers one."""
    control = DefaultFlowCallback().on_epoch_end(case.args, case.state, copy(case.before))
    assert control.state()["args"] == expected_after_epoch(case)


def run_steps(args: TrainingArguments, max_steps: int) -> dict[str, list[int]]:
    """Drive the flow over a whole run as the loop would (flags cleared at each step begin)."""
    state = TrainerState(max_steps=max_steps)
    state.compute_steps(args, max_steps)
    flow = DefaultFlowCallback()
    seen: dict[str, list[int]] = {"log": [], "eval": [], "save": [], "stop": []}
    for step in range(1, max_steps + 1):
        state.global_step = step
        control = flow.on_step_end(args, state, TrainerControl())
        for key, flag in (("log", "should_log"), ("eval", "should_evaluate")):
            if getattr(control, flag):
                seen[key].append(step)
        if control.should_save:
            seen["save"].append(step)
        if control.should_training_stop:
            seen["stop"].append(step)
    return seen


def test_final_evaluation_is_added_once_when_not_due() -> None:
    """max_steps not a multiple of eval_steps gets one extra evaluation at the last step."""
    args = TrainingArguments(eval_strategy="steps", eval_steps=4, logging_steps=3)
    assert run_steps(args, 10) == {
        "log": [3, 6, 9],
        "eval": [4, 8, 10],
        "save": [10],
        "stop": [10],
    }
    assert run_steps(args, 8)["eval"] == [4, 8]


def test_end_of_run_save_only_for_the_steps_strategy() -> None:
    """The forced save at the last step happens for 'steps' and not for 'epoch' or 'best'."""
    for strategy, expected in (("steps", [5, 7]), ("epoch", []), ("no", [])):
        args = TrainingArguments(save_strategy=strategy, save_steps=5)
        assert run_steps(args, 7)["save"] == expected


def test_ratio_intervals_and_first_step_logging() -> None:
    """Ratio intervals resolve with ceil against max_steps; logging_first_step logs step 1."""
    args = TrainingArguments(logging_steps=0.25, logging_first_step=True, save_strategy="no")
    assert run_steps(args, 10)["log"] == [1, 3, 6, 9]


def test_eval_delay_counts_steps_or_fractional_epochs() -> None:
    """eval_delay postpones step evaluations by steps and epoch evaluations by epoch progress."""
    steps = TrainingArguments(eval_strategy="steps", eval_steps=2, eval_delay=5)
    assert run_steps(steps, 10)["eval"] == [6, 8, 10]
    epochs = TrainingArguments(eval_strategy="epoch", eval_delay=1.5)
    flow = DefaultFlowCallback()
    early = flow.on_epoch_end(epochs, TrainerState(epoch=1.0), TrainerControl())
    late = flow.on_epoch_end(epochs, TrainerState(epoch=1.5), TrainerControl())
    assert (early.should_evaluate, late.should_evaluate) == (False, True)
