"""Secrets in arguments or the model config never reach the journal's ``RunStarted`` in clear."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from trainbus.bus._events import RunStarted
from trainbus.bus._journal import JournalReader
from trainbus.orchestrator.rundir import find_run_dir
from trainbus.trainer._arguments import TrainingArguments
from trainbus.trainer._trainer import Trainer
from trainbus.trainer.testing import RegressionDataset, TinyRegressor


@dataclasses.dataclass(repr=False)
class ArgumentsWithSecrets(TrainingArguments):
    """A user's extended arguments with a secret of their own."""

    db_password: str | None = None


class ConfigWithSecrets:
    """A model config carrying credentials next to ordinary hyper-parameters."""

    def to_dict(self) -> dict[str, Any]:
        """Hyper-parameters as a model would report them."""
        return {
            "hidden": 8,
            "pad_token_id": 0,
            "api_key": "sk-live-hparam",
            "nested": {"auth_header": "Bearer header-secret"},
            "db_url": "postgres://user:url-secret@db/x",
        }


def test_secret_arguments_and_hparams_are_masked_in_the_journal(tmp_path: Path) -> None:
    """The journal on disk holds masks where the secrets were, and the plain values unchanged."""
    args = ArgumentsWithSecrets(
        output_dir=str(tmp_path),
        max_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        hub_token="hf_argument_secret",
        db_password="argument-password",
    )
    model = TinyRegressor()
    model.config = ConfigWithSecrets()
    Trainer(model=model, args=args, train_dataset=RegressionDataset(8)).train()

    journal = find_run_dir(tmp_path).journal_path
    raw = b"".join(r.payload for r in JournalReader(journal).records())  # segments decompressed
    for secret in ("hf_argument_secret", "argument-password", "sk-live-hparam", "header-secret"):
        assert secret.encode() not in raw
    assert b"url-secret" not in raw
    (started,) = [e for e in JournalReader(journal).read_from(0) if isinstance(e, RunStarted)]
    assert started.config["hub_token"] == "<HUB_TOKEN>"
    assert started.config["db_password"] == "<DB_PASSWORD>"
    assert started.config["max_steps"] == 1
    assert started.hparams == {
        "hidden": 8,
        "pad_token_id": 0,
        "api_key": "***",
        "nested": {"auth_header": "***"},
        "db_url": "postgres://user:***@db/x",
    }
