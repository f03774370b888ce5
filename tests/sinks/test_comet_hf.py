"""Differential: transformers' own ``CometCallback`` and trainbus's Comet sink on one training.

Both run the same tiny BERT training (train, then evaluate, then predict) with
``report_to=["comet_ml"]`` offline; each side's archives are read back with the SDK's own
uploader into a local fake server, and the two experiments are compared: metric names, steps
and epochs, parameter names and values. Every difference found is a deliberate one, listed in
``docs/integrations/comet_ml.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.sinks.comet_fake import FakeComet, FakeExperiment
from tests.sinks.test_comet import _isolated, read_archives
from tests.support.tiny_bert import tiny_bert
from trainbus.sinks.comet import offline_archives

__all__ = ["_isolated"]  # the autouse fixture: own HOME, no machine settings

pytest.importorskip("comet_ml")

# Parameter differences, each one known (docs/integrations/comet_ml.md): the sink logs what the
# two TrainingArguments' to_dict() give, so these come from the arguments, not from the sink.
# transformers expands an unset accelerator_config into its defaults; trainbus keeps None.
ACCELERATOR_CONFIG_KEYS = frozenset(
    {
        "dispatch_batches",
        "even_batches",
        "gradient_accumulation_kwargs",
        "non_blocking",
        "split_batches",
        "use_seedable_sampler",
    }
)
# Arguments trainbus's to_dict() lists that transformers' drops from its own.
ONLY_IN_TRAINBUS_ARGS = frozenset(
    {"args|accelerator_config", "args|resume_only_model", "args|warmup_ratio"}
)


def _train(flavour: str, output_dir: Path) -> Any:
    """Train, evaluate and predict the tiny model with ``report_to=["comet_ml"]``."""
    if flavour == "transformers":
        from transformers import Trainer, TrainingArguments
    else:
        from trainbus import Trainer, TrainingArguments  # type: ignore[assignment]
    model, rows = tiny_bert()
    args = TrainingArguments(
        output_dir=str(output_dir),
        run_name="tiny-diff",
        report_to=["comet_ml"],
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    trainer.evaluate()
    trainer.predict(rows)
    return trainer


def _end_transformers_experiment(trainer: Any) -> None:
    """transformers leaves its experiment open (the SDK ends it at exit); end it here."""
    from transformers.integrations import CometCallback

    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, CometCallback)]
    callback._experiment.end()


def _metrics(experiment: FakeExperiment) -> dict[tuple[str, int], list[float]]:
    """(name, step) -> the epochs it was logged at, the SDK's own bookkeeping left out."""
    found: dict[tuple[str, int], list[float]] = {}
    for m in experiment.metrics:
        if m["metricName"].startswith(("train/", "eval/", "test/")):
            found.setdefault((m["metricName"], m["step"]), []).append(round(m["epoch"], 6))
    return found


@pytest.mark.slow
def test_trainbus_logs_what_transformers_callback_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same training logged offline by transformers and by trainbus reads back (with the
    SDK's uploader) as the same metric names, steps and epochs and the same parameters."""
    experiments: dict[str, FakeExperiment] = {}
    monkeypatch.setenv("COMET_START_ONLINE", "0")
    for flavour in ("transformers", "trainbus"):
        archives_dir = tmp_path / flavour / "archives"
        monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(archives_dir))
        monkeypatch.chdir(tmp_path)
        trainer = _train(flavour, tmp_path / flavour / "out")
        if flavour == "transformers":
            _end_transformers_experiment(trainer)
        archives = offline_archives(archives_dir)
        with FakeComet() as comet:
            read_archives(archives, comet, monkeypatch)
            monkeypatch.setenv("COMET_URL_OVERRIDE", "http://127.0.0.1:9/clientlib/")
        assert comet.rejected == []
        experiments[flavour] = comet.only()
    theirs, ours = experiments["transformers"], experiments["trainbus"]
    assert ours.name == theirs.name == "tiny-diff"
    assert _metrics(ours) == _metrics(theirs)
    assert ("test/loss", 4) in _metrics(ours)
    only_theirs = {n for n in set(theirs.params) - set(ours.params) if not n.startswith("run_arg_")}
    assert only_theirs == {f"args|accelerator_config|{k}" for k in ACCELERATOR_CONFIG_KEYS}, (
        "a parameter only transformers logs"
    )
    assert set(ours.params) - set(theirs.params) == ONLY_IN_TRAINBUS_ARGS
    differing = {
        n for n in set(ours.params) & set(theirs.params) if ours.params[n] != theirs.params[n]
    }
    assert differing == {"args|output_dir"}
