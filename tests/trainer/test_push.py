"""``push_to_hub`` to a directory: what lands there, when (``hub_strategy``), the hooks and events
it fires, and the destinations refused before training."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tiny_bert import tiny_bert
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import PushBegin
from trainbus.bus.testing import RecordingSink
from trainbus.trainer import _checkpoint as ckpt
from trainbus.trainer import _trainer_push
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._callbacks import TrainerCallback
from trainbus.trainer._push import PushResult
from trainbus.trainer._trainer import Trainer

transformers = pytest.importorskip("transformers")


class PushRecorder(TrainerCallback):
    """Records the step of every ``on_push_begin`` and of every ``on_train_begin``."""

    def __init__(self) -> None:
        self.pushes: list[int] = []
        self.train_begins = 0

    def on_push_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pushes.append(state.global_step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.train_begins += 1


def bert_trainer(
    output_dir: Path, callbacks: list[Any] | None = None, sinks: Any = (), **overrides: Any
) -> Trainer:
    """Four steps of a tiny BERT classifier, a checkpoint every two steps, no integration."""
    model, rows = tiny_bert()
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "save_strategy": "steps",
        "save_steps": 2,
        "report_to": "none",
        "disable_tqdm": True,
        **overrides,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=rows,
        callbacks=callbacks,
        sinks=list(sinks),
    )


def assert_same_weights(directory: Path, model: torch.nn.Module) -> None:
    loaded = transformers.BertForSequenceClassification.from_pretrained(str(directory))
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_every_save_pushes_a_loadable_model_at_each_save(tmp_path: Path) -> None:
    """``every_save`` fires ``on_push_begin`` (and publishes ``PushBegin`` naming the
    destination) at each save, and leaves the model, its config, the arguments and a card in
    the directory: ``from_pretrained`` loads the trained weights, no training state is there."""
    dest = tmp_path / "models" / "digits"
    recorder, sink = PushRecorder(), RecordingSink("recorder")
    trainer = bert_trainer(
        tmp_path / "out",
        [recorder],
        sinks=[sink],
        push_to_hub=True,
        hub_model_id=dest.as_uri(),
        hub_always_push=True,  # every save pushed, however long the previous push takes
    )
    trainer.train()

    assert recorder.pushes == [2, 4]
    pushed = [e for e in sink.received if isinstance(e, PushBegin)]
    assert [e.global_step for e in pushed] == [2, 4]
    assert {e.destination for e in pushed} == {dest.as_uri()}
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "training_args.json", "README.md"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert not names & {"last-checkpoint", "checkpoint-2", "checkpoint-4"}
    assert_same_weights(dest, trainer.model)
    card = (dest / "README.md").read_text()
    assert "Training in progress, step 4" in card and "# digits" in card
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the snapshots were removed once placed
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_checkpoint_strategy_keeps_the_last_checkpoint_to_resume_from(tmp_path: Path) -> None:
    """``checkpoint`` also keeps the latest checkpoint, whole, as ``last-checkpoint``, and a new
    ``train()`` resumes from it."""
    dest = tmp_path / "dest"
    trainer = bert_trainer(
        tmp_path / "out",
        push_to_hub=True,
        hub_model_id=str(dest),
        hub_strategy="checkpoint",
        hub_always_push=True,
    )
    trainer.train()

    last = dest / "last-checkpoint"
    state = json.loads((last / ckpt.STATE_NAME).read_text())
    assert state["global_step"] == 4
    assert (last / ckpt.OPTIMIZER_NAME).is_file()
    assert not (dest / "checkpoint-2").exists()
    resumed = bert_trainer(tmp_path / "again", max_steps=6)
    resumed.train(resume_from_checkpoint=str(last))
    assert resumed.state.global_step == 6


def test_all_checkpoints_strategy_keeps_every_checkpoint_pushed(tmp_path: Path) -> None:
    """``all_checkpoints`` keeps each pushed checkpoint under its own name, even those the
    output directory's rotation deleted."""
    dest = tmp_path / "dest"
    trainer = bert_trainer(
        tmp_path / "out",
        push_to_hub=True,
        hub_model_id=str(dest),
        hub_strategy="all_checkpoints",
        hub_always_push=True,
        save_total_limit=1,
    )
    trainer.train()

    assert [p.name for p in ckpt.sorted_checkpoints(tmp_path / "out")] == ["checkpoint-4"]
    assert [p.name for p in ckpt.sorted_checkpoints(dest)] == ["checkpoint-2", "checkpoint-4"]
    assert not (dest / "last-checkpoint").exists()
    for step in (2, 4):
        state = json.loads((dest / f"checkpoint-{step}" / ckpt.STATE_NAME).read_text())
        assert state["global_step"] == step


def test_end_strategy_pushes_only_when_the_script_asks(tmp_path: Path) -> None:
    """``end`` pushes nothing during training; ``push_to_hub()`` afterwards fires
    ``on_push_begin`` once and pushes the trained model, and ``blocking=False`` returns a
    future of the same result. A later push keeps the checkpoints of earlier ones."""
    dest = tmp_path / "dest"
    recorder = PushRecorder()
    trainer = bert_trainer(
        tmp_path / "out",
        [recorder],
        push_to_hub=True,
        hub_model_id=str(dest),
        hub_strategy="end",
    )
    trainer.train()
    assert recorder.pushes == []
    assert not dest.exists()

    result = trainer.push_to_hub(commit_message="Final model", tags=["digits"])
    assert recorder.pushes == [4]
    assert isinstance(result, PushResult)
    assert result.location == str(dest) and result.commit_message == "Final model"
    assert_same_weights(dest, trainer.model)
    card = (dest / "README.md").read_text()
    assert card.startswith("---\n") and '"digits"' in card and "Final model: step 4" in card

    (dest / "last-checkpoint").mkdir()  # as an earlier "checkpoint" push would have left it
    (dest / "last-checkpoint" / "marker").write_text("kept")
    future = trainer.push_to_hub(blocking=False)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60).location == str(dest)
    assert (dest / "last-checkpoint" / "marker").read_text() == "kept"
    assert recorder.pushes == [4, 4]


def test_save_model_pushes_as_transformers_does(tmp_path: Path) -> None:
    """With ``push_to_hub=True``, ``save_model()`` after training pushes too ("Model save")."""
    dest = tmp_path / "dest"
    recorder = PushRecorder()
    trainer = bert_trainer(
        tmp_path / "out",
        [recorder],
        push_to_hub=True,
        hub_model_id=str(dest),
        hub_strategy="end",
        save_strategy="no",
    )
    trainer.train()
    trainer.save_model()
    assert recorder.pushes == [4]
    assert "Model save: step 4" in (dest / "README.md").read_text()


@pytest.mark.parametrize("always", [False, True], ids=["skip", "always_push"])
def test_a_save_during_a_running_push_is_pushed_only_with_always_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always: bool
) -> None:
    """While the step-2 push is still running (held until the step-4 save's ``on_save``), the
    step-4 save is not pushed, unless ``hub_always_push``; ``train()`` waits for what runs."""
    release = threading.Event()
    placed: list[int] = []
    real_place = _trainer_push.place_in_directory

    def held_place(target: Path, model_files: Path, **kwargs: Any) -> Path:
        assert release.wait(timeout=120), "the push was never released"  # a hang guard only
        placed.append(json.loads((model_files / ckpt.STATE_NAME).read_text())["global_step"])
        return real_place(target, model_files, **kwargs)

    class Releaser(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 4:
                release.set()

    monkeypatch.setattr(_trainer_push, "place_in_directory", held_place)
    recorder = PushRecorder()
    trainer = bert_trainer(
        tmp_path / "out",
        [recorder, Releaser()],
        push_to_hub=True,
        hub_model_id=str(tmp_path / "dest"),
        hub_always_push=always,
    )
    trainer.train()
    assert recorder.pushes == ([2, 4] if always else [2])
    assert placed == ([2, 4] if always else [2])  # train() returned after the pushes it began


@pytest.mark.parametrize(
    ("hub_model_id", "expected"),
    [
        ("s3://bucket/digits", "no destination trainbus can push to"),
        ("models:/", "does not name one registered model"),
        ("models:/digits/3", "does not name one registered model"),
        ("file://server/share/digits", "is not a local file URI"),
        ("./digits", "no destination trainbus can push to"),
    ],
)
def test_bad_destinations_are_refused_in_one_line_before_training(
    tmp_path: Path, hub_model_id: str, expected: str
) -> None:
    """A destination trainbus cannot push to fails when the Trainer is built: one line naming
    ``hub_model_id`` and what was expected."""
    with pytest.raises(ConfigurationError) as info:
        bert_trainer(tmp_path / "out", push_to_hub=True, hub_model_id=hub_model_id)
    message = str(info.value)
    assert expected in message and "hub_model_id" in message and "\n" not in message


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_a_directory_overlapping_output_dir_is_refused(tmp_path: Path, where: str) -> None:
    """Each push replaces the destination, so it may be neither ``output_dir``, nor inside it,
    nor around it."""
    out = tmp_path / "run" / "out"
    dest = {"same": out, "inside": out / "pushed", "around": tmp_path / "run"}[where]
    with pytest.raises(ConfigurationError, match="overlaps output_dir"):
        bert_trainer(out, push_to_hub=True, hub_model_id=str(dest))


def test_a_registry_destination_without_an_mlflow_sink_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """``models:/<name>`` registers through the run's MLflow sink: without one, ``train()``
    refuses in one line before ``on_train_begin``."""
    recorder = PushRecorder()
    trainer = bert_trainer(
        tmp_path / "out", [recorder], push_to_hub=True, hub_model_id="models:/digits"
    )
    with pytest.raises(ConfigurationError, match=r"models:/digits.*add 'mlflow' to report_to"):
        trainer.train()
    assert recorder.train_begins == 0


def test_the_hub_needs_a_token_and_a_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub repo id needs a token (none: one line before training) and no ``HF_HUB_OFFLINE``;
    with both, the Trainer is built without contacting the Hub, its destination the repo id."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigurationError, match=r"'me/digits'.*no token was found"):
        bert_trainer(tmp_path / "out", push_to_hub=True, hub_model_id="me/digits")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigurationError, match="HF_HUB_OFFLINE is set"):
        bert_trainer(tmp_path / "out", push_to_hub=True, hub_model_id="me/digits", hub_token="x")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    trainer = bert_trainer(tmp_path / "out", push_to_hub=True, hub_model_id="me/digits")
    assert trainer.hub_model_id == "me/digits"
    trainer = bert_trainer(tmp_path / "out", push_to_hub=True)  # unset: named after output_dir
    assert trainer.hub_model_id == "out"


def test_set_push_to_hub_sets_every_hub_field(tmp_path: Path) -> None:
    """``set_push_to_hub`` turns pushing on with every ``hub_*`` field, and checks the
    strategy."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.set_push_to_hub("models:/digits", strategy="end", always_push=True) is args
    assert (args.push_to_hub, args.hub_model_id, args.hub_strategy) == (
        True,
        "models:/digits",
        "end",
    )
    assert args.hub_always_push
    with pytest.raises(ConfigurationError, match="hub_strategy must be one of"):
        args.set_push_to_hub("models:/digits", strategy="sometimes")


def test_a_crashed_push_snapshot_is_removed_at_the_next_train(tmp_path: Path) -> None:
    """A push snapshot a killed process left in ``output_dir`` is removed like half a save."""
    leftover = tmp_path / ".push-4.tmp-12345"
    leftover.mkdir()
    assert ckpt.recover_interrupted_saves(tmp_path) == [leftover]
    assert not leftover.exists()
