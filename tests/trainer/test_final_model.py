"""The final model: written at the end of training, and published, only when a sink wants it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from tests.support.tiny_bert import tiny_bert
from trainbus.bus._events import Artifact, Log, RunFinished, TrainEnd
from trainbus.bus._journal import JournalReader
from trainbus.bus.testing import RecordingSink
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.orchestrator.sink_host import read_reports
from trainbus.sinks.tensorboard import TensorBoardSink
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._launcher import LocalLauncher
from trainbus.trainer._trainer import Trainer


def wanting(name: str = "uploader") -> RecordingSink:
    """A recording sink that asks for the final model, as ``WANDB_LOG_MODEL=end`` makes W&B's."""
    sink = RecordingSink(name)
    sink.wants_final_model = True
    return sink


def bert_trainer(output_dir: Path, sinks: list[RecordingSink], **overrides: Any) -> Trainer:
    """Four steps of a tiny BERT classifier, no integration but the given sinks."""
    model, rows = tiny_bert()
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        **overrides,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=rows,
        eval_dataset=rows if settings.get("eval_strategy", "no") != "no" else None,
        sinks=sinks,
    )


def test_the_final_model_is_published_loadable_before_the_run_ends(tmp_path: Path) -> None:
    """A sink wanting the final model gets ``Artifact(kind="model")`` after the summary log and
    before ``TrainEnd``/``RunFinished``, naming ``<output_dir>/final_model``, which
    ``from_pretrained`` loads with the trained weights."""
    transformers = pytest.importorskip("transformers")
    sink = wanting()
    trainer = bert_trainer(tmp_path, [sink])
    trainer.train()

    kinds = [type(e).__name__ for e in sink.received]
    models = [e for e in sink.received if isinstance(e, Artifact) and e.kind == "model"]
    assert len(models) == 1
    (model_event,) = models
    index = sink.received.index(model_event)
    assert isinstance(sink.received[index - 1], Log)  # the summary: train_runtime, train_loss...
    assert "train_loss" in sink.received[index - 1].logs
    assert kinds.index("TrainEnd") > index and kinds.index("RunFinished") > index
    assert Path(model_event.path) == tmp_path / "final_model"
    assert model_event.name == "final_model"

    loaded = transformers.BertForSequenceClassification.from_pretrained(model_event.path)
    trained = trainer.model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[key], msg=key)
    assert (tmp_path / "final_model" / "training_args.json").is_file()
    assert not list(tmp_path.glob(".final_model.*"))  # the staging directory was renamed


def test_nothing_is_written_when_no_sink_wants_it(tmp_path: Path) -> None:
    """Without a sink that wants it, no ``final_model`` directory and no model artifact."""
    sink = RecordingSink("plain")
    trainer = bert_trainer(tmp_path, [sink])
    trainer.train()
    assert not (tmp_path / "final_model").exists()
    assert not [e for e in sink.received if isinstance(e, Artifact)]


def test_the_local_launcher_honours_a_sink_that_wants_it(tmp_path: Path) -> None:
    """A bus without an orchestrator (``LocalLauncher``) still learns it from its sinks."""
    sink = wanting()
    trainer = bert_trainer(tmp_path, [])
    trainer.train(launcher=LocalLauncher(sinks=[sink]))
    assert [e.path for e in sink.received if isinstance(e, Artifact) and e.kind == "model"] == [
        str(tmp_path / "final_model")
    ]


def test_with_load_best_model_at_end_the_final_model_is_the_best_checkpoint(
    tmp_path: Path,
) -> None:
    """Under ``load_best_model_at_end`` the published weights are the best checkpoint's, as
    transformers' callbacks upload the model after the trainer loaded it."""
    sink = wanting()
    trainer = bert_trainer(
        tmp_path,
        [sink],
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    best_weights = safetensors.torch.load_file(str(Path(best) / "model.safetensors"))
    final_weights = safetensors.torch.load_file(str(tmp_path / "final_model" / "model.safetensors"))
    assert best_weights.keys() == final_weights.keys()
    for key, value in best_weights.items():
        torch.testing.assert_close(final_weights[key], value, msg=key)
    checkpoints = [e for e in sink.received if isinstance(e, Artifact) and e.kind == "checkpoint"]
    assert len(checkpoints) == 4


def test_a_sink_in_the_sink_process_gets_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``report_to`` sink moved to the sink process (``TRAINBUS_SINK_PROCESS=1``) is not on the
    trainer's bus, yet its wish reaches the trainer: the journal the child follows holds the
    model artifact before ``TrainEnd``, and the child delivered the run."""
    monkeypatch.setenv("TRAINBUS_SINK_PROCESS", "1")
    monkeypatch.setattr(TensorBoardSink, "wants_final_model", True)  # in this process only
    trainer = bert_trainer(tmp_path, [], report_to=["tensorboard"])
    trainer.train()

    run_dir = find_run_dir(tmp_path)
    record = run_dir.read_record()
    assert record.sink_pid is not None  # tensorboard ran in the child, not on the trainer's bus
    events = list(JournalReader(run_dir.journal_path).read_from(0))
    models = [i for i, e in enumerate(events) if isinstance(e, Artifact) and e.kind == "model"]
    assert len(models) == 1
    ends = [i for i, e in enumerate(events) if isinstance(e, TrainEnd | RunFinished)]
    assert ends and min(ends) > models[0]
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
    report = read_reports(run_dir)["tensorboard"]
    assert report.delivered > 0 and report.undelivered == 0
