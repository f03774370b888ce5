"""Checkpoint files, atomic writes, ``weights_only`` loading, rotation and the best model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from tests.trainer.recording import Run, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact
from trainbus.trainer import EvalPrediction, TrainerCallback
from trainbus.trainer._checkpoint import find_checkpoint, rotate_checkpoints, write_checkpoint
from trainbus.trainer._lock import LOCK_NAME
from trainbus.trainer._rng import capture_rng_state
from trainbus.trainer.testing import TinyRegressor

FILES = {
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.json",
}


def _checkpoints(run: Run) -> list[str]:
    out = Path(run.trainer.args.output_dir)
    names = (p.name for p in out.iterdir() if p.name != LOCK_NAME)  # held while training runs
    return sorted(names, key=lambda name: (len(name), name))


def test_checkpoint_holds_every_file_and_nothing_is_left_half_written(tmp_path: Path) -> None:
    """Each checkpoint has the six files; no staging directory survives the run."""
    run = make_run(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    run.trainer.train()
    assert _checkpoints(run) == ["checkpoint-2", "checkpoint-4"]
    for name in _checkpoints(run):
        assert {p.name for p in (tmp_path / "out" / name).iterdir()} == FILES


def test_every_pickle_file_loads_with_weights_only(tmp_path: Path) -> None:
    """Optimizer, scheduler and RNG files load with ``weights_only=True``: no arbitrary objects."""
    run = make_run(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    run.trainer.train()
    directory = tmp_path / "out" / "checkpoint-2"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        loaded = torch.load(directory / name, weights_only=True)
        assert isinstance(loaded, dict) and loaded
    weights = safetensors.torch.load_file(str(directory / "model.safetensors"))
    model_state = run.trainer.model.state_dict()
    assert set(weights) == set(model_state)
    assert all(torch.equal(weights[k], model_state[k]) for k in weights)


def test_trainer_state_json_is_hf_formatted_with_callback_states(tmp_path: Path) -> None:
    """``trainer_state.json``: 2-space indent, sorted keys, newline, control state recorded."""
    run = make_run(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    run.trainer.train()
    text = (tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["global_step"] == 2
    assert data["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True
    args = json.loads((tmp_path / "out" / "checkpoint-2" / "training_args.json").read_text())
    assert args["save_steps"] == 2


def test_a_failed_write_leaves_no_checkpoint_behind(tmp_path: Path) -> None:
    """An error while writing removes the staging directory; the older checkpoint is the latest."""
    model = TinyRegressor()

    def good_state(directory: Path) -> None:
        (directory / "trainer_state.json").write_text("{}\n")

    def broken_state(directory: Path) -> None:
        raise OSError("disk full")

    write_checkpoint(
        tmp_path,
        1,
        model=model,
        optimizer=None,
        scheduler=None,
        write_state=good_state,
        args_dict={},
        rng_states=[capture_rng_state()],
    )
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(
            tmp_path,
            2,
            model=model,
            optimizer=None,
            scheduler=None,
            write_state=broken_state,
            args_dict={},
            rng_states=[capture_rng_state()],
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert find_checkpoint(tmp_path, True).name == "checkpoint-1"


def test_resume_without_any_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    """``resume_from_checkpoint=True`` with an empty output_dir names the directory."""
    with pytest.raises(ConfigurationError, match="holds no checkpoint"):
        find_checkpoint(tmp_path, True)
    with pytest.raises(ConfigurationError, match="is not a checkpoint directory"):
        find_checkpoint(tmp_path, str(tmp_path))


def _mkdirs(root: Path, steps: list[int]) -> None:
    for step in steps:
        (root / f"checkpoint-{step}").mkdir(parents=True)


@pytest.mark.parametrize(
    ("limit", "best", "kept"),
    [
        (2, None, [3, 4]),
        (1, None, [4]),
        (1, 2, [2, 4]),
        (2, 1, [1, 4]),
        (3, 1, [1, 3, 4]),
        (1, 4, [4]),
    ],
)
def test_rotation_keeps_the_newest_and_never_the_best(
    tmp_path: Path, limit: int, best: int | None, kept: list[int]
) -> None:
    """``save_total_limit`` deletes the oldest checkpoints but always keeps the best one."""
    _mkdirs(tmp_path, [1, 2, 3, 4])
    best_dir = str(tmp_path / f"checkpoint-{best}") if best else None
    rotate_checkpoints(tmp_path, limit, best_dir)
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir()) == kept


def _scripted_metrics(run: Run, by_step: dict[int, float]) -> None:
    trainer = run.trainer

    def compute_metrics(_: EvalPrediction) -> dict[str, float]:
        return {"score": by_step[trainer.state.global_step]}

    trainer.compute_metrics = compute_metrics


def test_limit_one_with_best_model_keeps_and_loads_the_best(tmp_path: Path) -> None:
    """``save_total_limit=1``: the best checkpoint survives rotation and is loaded at the end."""
    run = make_run(
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=False,
        train_size=40,
    )
    _scripted_metrics(run, {2: 3.0, 4: 1.0, 6: 2.0, 8: 4.0})
    seen_during: list[list[str]] = []

    class Watch(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen_during.append(_checkpoints(run))

    run.trainer.add_callback(Watch())
    run.trainer.train()
    assert seen_during == [
        ["checkpoint-2"],
        ["checkpoint-4"],
        ["checkpoint-4", "checkpoint-6"],
        ["checkpoint-4", "checkpoint-8"],
    ]
    assert _checkpoints(run) == ["checkpoint-4"]
    state = run.trainer.state
    assert (state.best_metric, state.best_global_step) == (1.0, 4)
    assert state.best_model_checkpoint == str(tmp_path / "out" / "checkpoint-4")
    best = safetensors.torch.load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    for name, value in run.trainer.model.state_dict().items():
        assert torch.equal(best[name], value), name


def test_save_only_model_skips_optimizer_and_scheduler(tmp_path: Path) -> None:
    """``save_only_model`` writes weights, state and RNG, but no optimizer or scheduler."""
    run = make_run(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True)
    run.trainer.train()
    names = {p.name for p in (tmp_path / "out" / "checkpoint-2").iterdir()}
    assert names == FILES - {"optimizer.pt", "scheduler.pt"}


def test_save_model_inside_a_run_publishes_a_model_artifact(tmp_path: Path) -> None:
    """``save_model`` from ``on_train_end`` writes the weights and publishes ``Artifact(model)``."""
    run = make_run(tmp_path, max_steps=1)
    target = tmp_path / "final"

    class SaveAtEnd(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.trainer.save_model(str(target))

    run.trainer.add_callback(SaveAtEnd())
    run.trainer.train()
    assert (target / "model.safetensors").is_file()
    assert (target / "config.json").is_file()
    artifacts = [e for e in run.bus_events() if isinstance(e, Artifact)]
    assert [(a.kind, a.path) for a in artifacts] == [("model", str(target))]


def test_save_strategy_best_saves_only_new_bests(tmp_path: Path) -> None:
    """``save_strategy="best"`` writes a checkpoint exactly at the evaluations that improved."""
    run = make_run(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="best",
        metric_for_best_model="score",
        greater_is_better=True,
        train_size=40,
    )
    _scripted_metrics(run, {1: 1.0, 2: 0.5, 3: 2.0, 4: 2.0, 5: 3.0, 6: 1.0})
    run.trainer.train()
    assert _checkpoints(run) == ["checkpoint-1", "checkpoint-3", "checkpoint-5"]
    assert [s.global_step for s in run.callback.seen if s.event == "save"] == [1, 3, 5]
