"""The compatibility registry against the installed transformers, the table, and the refusals.

``docs/compatibility.md`` must be what ``python -m trainbus.trainer._compatibility`` prints, and
every name transformers' ``TrainingArguments`` and ``Trainer`` have must be in the registry
(implemented or refused): a transformers upgrade that adds one fails here, naming it.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from trainbus.trainer import _argument_checks as checks
from trainbus.trainer import _support as support
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._compatibility import main, render
from trainbus.trainer._support import UnsupportedError
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import TinyRegressor

transformers = pytest.importorskip("transformers")

TABLE = Path(__file__).resolve().parents[2] / support.TABLE_PATH


def unregistered_fields(theirs: type) -> list[str]:
    """transformers' fields the registry neither implements nor refuses, in their order."""
    return [f.name for f in dataclasses.fields(theirs) if f.name not in support.FIELDS]


def unregistered_members(theirs: type, registered: tuple[str, ...]) -> list[str]:
    """Public members of a transformers class (fields aside) the registry does not list."""
    fields = (
        {f.name for f in dataclasses.fields(theirs)} if dataclasses.is_dataclass(theirs) else set()
    )
    return [
        name
        for name in dir(theirs)
        if not name.startswith("_") and name not in fields and name not in registered
    ]


def test_every_transformers_field_is_implemented_or_refused() -> None:
    """Each field of the installed transformers' TrainingArguments is in the registry."""
    missing = unregistered_fields(transformers.TrainingArguments)
    assert not missing, f"fields neither implemented nor refused: {missing}"
    theirs = [f.name for f in dataclasses.fields(transformers.TrainingArguments)]
    assert list(support.FIELDS) == theirs, "the registry keeps transformers' order and no extras"


def test_a_new_transformers_field_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above names a field transformers adds (here a fake one) until it is registered."""

    @dataclasses.dataclass
    class Newer(transformers.TrainingArguments):  # type: ignore[misc]  # untyped third-party base
        brand_new_option: int = 0

    monkeypatch.setattr(transformers, "TrainingArguments", Newer)
    assert unregistered_fields(transformers.TrainingArguments) == ["brand_new_option"]
    with pytest.raises(AssertionError, match=r"neither implemented nor refused: \['brand_new"):
        test_every_transformers_field_is_implemented_or_refused()


def test_our_fields_are_the_registry_plus_our_own() -> None:
    """TrainingArguments declares every registered field, in order, and only ours besides."""
    ours = [f.name for f in dataclasses.fields(TrainingArguments)]
    assert [name for name in ours if name in support.FIELDS] == list(support.FIELDS)
    assert [name for name in ours if name not in support.FIELDS] == list(support.TRAINBUS_FIELDS)


def test_trainer_arguments_and_members_are_registered() -> None:
    """Constructor arguments and public members of Trainer and TrainingArguments are listed."""
    arguments = list(inspect.signature(transformers.Trainer.__init__).parameters)[1:]
    assert tuple(arguments) == support.TRAINER_ARGUMENTS
    assert unregistered_members(transformers.Trainer, support.TRAINER_MEMBERS) == []
    assert unregistered_members(transformers.TrainingArguments, support.ARGUMENTS_MEMBERS) == []
    for registered, theirs in (
        (support.TRAINER_MEMBERS, transformers.Trainer),
        (support.ARGUMENTS_MEMBERS, transformers.TrainingArguments),
    ):
        assert [name for name in registered if not hasattr(theirs, name)] == []


def test_a_new_trainer_method_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public method transformers adds to its Trainer is named until it is registered."""
    monkeypatch.setattr(transformers.Trainer, "shiny_new_method", lambda self: None, raising=False)
    assert unregistered_members(transformers.Trainer, support.TRAINER_MEMBERS) == [
        "shiny_new_method"
    ]


def test_value_lists_equal_transformers_enums() -> None:
    """The names our checks accept are exactly transformers' enum and choice values."""
    utils = transformers.trainer_utils
    args_module = transformers.training_args
    assert tuple(m.value for m in utils.SchedulerType) == checks.SCHEDULER_TYPES
    assert tuple(m.value for m in args_module.OptimizerNames) == checks.OPTIMIZER_NAMES
    assert tuple(m.value for m in utils.HubStrategy) == checks.HUB_STRATEGIES
    assert tuple(m.value for m in utils.IntervalStrategy) == checks.LOGGING_STRATEGIES
    assert tuple(m.value for m in utils.SaveStrategy) == checks.SAVE_STRATEGIES
    assert args_module.trainer_log_levels == checks.LOG_LEVELS
    choices = {
        f.name: f.metadata.get("choices") for f in dataclasses.fields(args_module.TrainingArguments)
    }
    assert list(checks.SAMPLING_STRATEGIES) == list(choices["train_sampling_strategy"])
    assert list(checks.START_METHODS) == list(choices["dataloader_multiprocessing_context"])
    assert set(checks.OPTIMIZERS) <= set(checks.OPTIMIZER_NAMES)


def test_table_is_generated_from_the_code() -> None:
    """docs/compatibility.md is exactly what the generator prints (regenerate it if not)."""
    expected = render()
    assert TABLE.read_text(encoding="utf-8") == expected, (
        f"{support.TABLE_PATH} is stale: run "
        f"`python -m trainbus.trainer._compatibility > {support.TABLE_PATH}`"
    )


def test_main_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m trainbus.trainer._compatibility`` prints the table and nothing else."""
    main()
    assert capsys.readouterr().out == render()


def test_table_status_follows_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method our Trainer gains turns its row to implemented, without editing the registry."""
    assert "| `create_accelerator_and_postprocess` | refused |" in render()
    monkeypatch.setattr(
        Trainer, "create_accelerator_and_postprocess", lambda self: None, raising=False
    )
    assert "| `create_accelerator_and_postprocess` | implemented |" in render()
    assert "| `push_to_hub` | implemented | to hub_model_id" in render()
    assert "| `deepspeed` | `None` | refused | DeepSpeed |" in render()
    assert "| `report_to` | `'none'` | implemented |" in render()


# --- refused methods --------------------------------------------------------------------------


def _trainer(tmp_path: Path) -> Trainer:
    return Trainer(TinyRegressor(), TrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_a_missing_transformers_method_is_refused_in_one_line(tmp_path: Path) -> None:
    """Trainer.get_tp_size raises UnsupportedError (an AttributeError) naming it and the table."""
    trainer = _trainer(tmp_path)
    with pytest.raises(UnsupportedError) as info:
        trainer.get_tp_size()  # type: ignore[attr-defined]
    assert str(info.value) == (
        "Trainer.get_tp_size is not supported by trainbus yet; see docs/compatibility.md "
        "(tensor parallelism (Accelerate))."
    )
    assert isinstance(info.value, AttributeError)
    assert not hasattr(trainer, "create_accelerator_and_postprocess")
    assert getattr(trainer, "create_accelerator_and_postprocess", "absent") == "absent"


def test_other_missing_attributes_stay_plain_attribute_errors(tmp_path: Path) -> None:
    """A name transformers does not have gives Python's usual AttributeError, not ours."""
    trainer = _trainer(tmp_path)
    with pytest.raises(AttributeError) as info:
        trainer.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    assert type(info.value) is AttributeError
    assert str(info.value) == "'Trainer' object has no attribute 'no_such_thing'"
    assert trainer.is_world_process_zero() is True  # implemented members are untouched


def test_subclasses_and_arguments_refuse_the_same_way(tmp_path: Path) -> None:
    """A user's Trainer subclass refuses too; TrainingArguments refuses its own missing members."""

    class MyTrainer(Trainer):
        pass

    trainer = MyTrainer(TinyRegressor(), TrainingArguments(output_dir=str(tmp_path)))
    with pytest.raises(
        UnsupportedError, match=r"^Trainer\.create_accelerator_and_postprocess is not"
    ):
        trainer.create_accelerator_and_postprocess  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(UnsupportedError, match=r"^TrainingArguments\.set_training is not"):
        TrainingArguments().set_training(learning_rate=1e-3)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"'TrainingArguments' object has no attribute 'x'"):
        TrainingArguments().x  # type: ignore[attr-defined]  # noqa: B018


def test_arguments_still_copy_and_pickle() -> None:
    """The refusing __getattr__ does not get in the way of copy, deepcopy and pickle."""
    import copy
    import pickle

    args = TrainingArguments(learning_rate=1e-3, label_names=["y"])
    for clone in (copy.copy(args), copy.deepcopy(args), pickle.loads(pickle.dumps(args))):
        assert clone == args
