"""Checkpoint files, atomic writes, ``weights_only`` loading, rotation and the best model."""

from __future__ import annotations

import fractions
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from structlog.testing import capture_logs

from tests.trainer.recording import Run, make_run, time_limit  # noqa: F401  (autouse)
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact
from trainbus.trainer import EvalPrediction, TrainerCallback
from trainbus.trainer._checkpoint import find_checkpoint, rotate_checkpoints, write_checkpoint
from trainbus.trainer._lock import LOCK_NAME
from trainbus.trainer._param_groups import export_states, import_states, transformers_groups
from trainbus.trainer._rng import capture_rng_state, read_rng_state, restore_rng_state, set_seed
from trainbus.trainer._schedules import create_scheduler
from trainbus.trainer.testing import RegressionDataset, TinyRegressor

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
    """Optimizer and scheduler load with ``weights_only=True``; the RNG file too, with NumPy's
    allow-listed array names and nothing else (no arbitrary objects)."""
    run = make_run(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    run.trainer.train()
    directory = tmp_path / "out" / "checkpoint-2"
    for name in ("optimizer.pt", "scheduler.pt"):
        loaded = torch.load(directory / name, weights_only=True)
        assert isinstance(loaded, dict) and loaded
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(directory / "rng_state.pth")
    assert set(needed) <= {"numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray"}
    rng = read_rng_state(directory / "rng_state.pth")
    assert rng is not None and set(rng) >= {"python", "numpy", "cpu"}
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


def test_save_only_model_skips_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    """``save_only_model`` writes weights, state and arguments only, as transformers does."""
    run = make_run(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True)
    run.trainer.train()
    names = {p.name for p in (tmp_path / "out" / "checkpoint-2").iterdir()}
    assert names == FILES - {"optimizer.pt", "scheduler.pt", "rng_state.pth"}


def test_save_model_inside_a_run_publishes_a_model_artifact(tmp_path: Path) -> None:
    """``save_model`` from ``on_train_end`` writes a plain module's weights (no config: it has no
    ``save_pretrained``) and arguments, and publishes ``Artifact(model)``."""
    run = make_run(tmp_path, max_steps=1)
    target = tmp_path / "final"

    class SaveAtEnd(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.trainer.save_model(str(target))

    run.trainer.add_callback(SaveAtEnd())
    run.trainer.train()
    assert {p.name for p in target.iterdir()} == {"model.safetensors", "training_args.json"}
    metadata = safetensors.safe_open(str(target / "model.safetensors"), "pt").metadata()
    assert metadata == {"format": "pt"}  # what transformers' loaders ask of a weights file
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


# --- optimizer files in transformers' parameter groups ------------------------------------------


def _stepped(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """One real update, so every parameter has optimizer state."""
    batch = RegressionDataset(length=4)[0]
    model(x=batch["x"].unsqueeze(0), labels=batch["labels"].unsqueeze(0))["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()


def _by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: {"lr": group["lr"], **optimizer.state[p]}
        for group in optimizer.param_groups
        for p in group["params"]
    }


def _assert_same_by_name(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for name, state in expected.items():
        assert actual[name].keys() == state.keys(), name
        for key, value in state.items():
            same = torch.equal(actual[name][key], value) if key != "lr" else None
            assert same if same is not None else actual[name][key] == value, (name, key)


def test_transformers_groups_split_decaying_parameters_first() -> None:
    """Weights decay, biases and LayerNorm parameters do not, in the model's order."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
    decay, other = transformers_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay] == ["0.weight", "2.weight"]
    assert [names[id(p)] for p in other] == ["0.bias", "1.weight", "1.bias", "2.bias"]


def test_a_single_group_optimizer_is_written_in_transformers_two_groups() -> None:
    """A one-group AdamW (a user's own) saves as transformers' two groups, and a
    transformers-grouped optimizer loads that file with the same state for every parameter."""
    torch.manual_seed(0)
    model = TinyRegressor()
    ours = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    scheduler = create_scheduler("linear", ours, num_warmup_steps=0, num_training_steps=10)
    _stepped(ours, model)
    scheduler.step()
    saved_optimizer, saved_scheduler = export_states(model, ours, scheduler)
    assert [len(g["params"]) for g in saved_optimizer["param_groups"]] == [2, 2]
    assert saved_scheduler is not None and len(saved_scheduler["base_lrs"]) == 2

    groups = [{"params": group, "weight_decay": 0.0} for group in transformers_groups(model)]
    theirs = torch.optim.AdamW(groups, lr=0.5)
    their_scheduler = torch.optim.lr_scheduler.LambdaLR(theirs, lambda step: 1.0)
    theirs.load_state_dict(saved_optimizer)
    their_scheduler.load_state_dict(saved_scheduler)
    _assert_same_by_name(_by_name(theirs, model), _by_name(ours, model))
    assert their_scheduler.last_epoch == scheduler.last_epoch == 1


def test_a_transformers_grouped_file_loads_into_our_single_group() -> None:
    """The reverse: a file in transformers' two groups fills our one group parameter by name."""
    torch.manual_seed(0)
    model = TinyRegressor()
    groups = [{"params": group, "weight_decay": 0.0} for group in transformers_groups(model)]
    theirs = torch.optim.AdamW(groups, lr=0.1)
    _stepped(theirs, model)
    ours = torch.optim.AdamW(model.parameters(), lr=0.5, betas=(0.9, 0.99), eps=1e-8)
    import_states(model, ours, None, theirs.state_dict(), None, file_name="optimizer.pt")
    assert len(ours.param_groups) == 1
    _assert_same_by_name(_by_name(ours, model), _by_name(theirs, model))


def test_an_optimizer_of_the_users_own_round_trips_by_parameter_name() -> None:
    """Groups transformers' layout cannot express (a learning rate per layer) are written as
    they are, with parameter names, and read back exactly."""
    torch.manual_seed(0)
    model = TinyRegressor()
    first, second = model.body[0], model.body[3]
    groups = [{"params": [second.weight, first.bias], "lr": 0.1}, {"params": [first.weight]}]
    custom = torch.optim.AdamW(groups, lr=0.01)  # second.bias is in no group
    _stepped(custom, model)
    saved, _ = export_states(model, custom, None)
    assert [g["param_names"] for g in saved["param_groups"]] == [
        ["body.3.weight", "body.0.bias"],
        ["body.0.weight"],
    ]
    fresh = torch.optim.AdamW(
        [{"params": [second.weight, first.bias], "lr": 0.1}, {"params": [first.weight]}], lr=0.01
    )
    import_states(model, fresh, None, saved, None, file_name="optimizer.pt")
    _assert_same_by_name(_by_name(fresh, model), _by_name(custom, model))
    assert all("param_names" not in group for group in fresh.param_groups)


def test_an_optimizer_file_of_another_model_is_refused_by_name() -> None:
    """Group sizes that fit neither layout: one error naming the file and the sizes."""
    model = TinyRegressor()
    other = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    ours = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    with pytest.raises(ConfigurationError, match=r"optimizer\.pt holds parameter groups of sizes"):
        import_states(model, ours, None, other.state_dict(), None, file_name="optimizer.pt")


# --- the RNG file ---------------------------------------------------------------------------------


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_in_transformers_format(tmp_path: Path) -> None:
    """The file holds transformers' shapes (NumPy's tuple with its array) and restores them."""
    path = tmp_path / "rng_state.pth"
    torch.save(capture_rng_state(), path)
    expected = _draws()
    set_seed(123)
    assert restore_rng_state(path)
    assert _draws() == expected
    saved = read_rng_state(path)
    assert saved is not None and saved["numpy"][0] == "MT19937"
    assert isinstance(saved["numpy"][1], np.ndarray)


def test_rng_state_in_the_earlier_trainbus_format_still_restores(tmp_path: Path) -> None:
    """Checkpoints written before the format matched transformers' (NumPy's key as a tensor)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    earlier = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "cpu": torch.get_rng_state(),
    }
    torch.save(earlier, tmp_path / "rng_state.pth")
    expected = _draws()
    set_seed(123)
    assert restore_rng_state(tmp_path / "rng_state.pth")
    assert _draws() == expected


def test_an_rng_file_needing_other_objects_is_not_unpickled(tmp_path: Path) -> None:
    """A file that names anything beyond NumPy's array is left unread, with one warning naming
    it, and the generators stay as they were."""
    path = tmp_path / "rng_state.pth"
    state = capture_rng_state()
    state["extra"] = fractions.Fraction(1, 3)
    torch.save(state, path)
    set_seed(5)
    expected = _draws()
    set_seed(5)
    with capture_logs() as logs:
        assert not restore_rng_state(path)
    assert _draws() == expected
    warned = [entry for entry in logs if entry["event"] == "rng_state_not_restored"]
    assert len(warned) == 1 and "fractions.Fraction" in warned[0]["reason"]
