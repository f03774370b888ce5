"""W&B through real training, against transformers' own ``WandbCallback`` in the same offline mode.

Both trainers train the same tiny BERT from the same seed; the runs are read back from W&B's
offline transaction logs (``tests/sinks/test_wandb.py``'s ``OfflineRun``) and compared: metric
keys and the steps they land on, summary, config, model artifacts and histograms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.sinks.test_wandb import OFFLINE_ENV, OfflineRun
from tests.support.tiny_bert import tiny_bert

pytest.importorskip("wandb")
transformers = pytest.importorskip("transformers")

import trainbus  # noqa: E402  # after the skips: the module needs both SDKs


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """W&B offline, quiet, with its own HOME; its service is stopped afterwards."""
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_WATCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    try:
        yield OFFLINE_ENV
    finally:
        import wandb

        wandb.teardown()


def _train(module: Any, out: Path, *, steps: int, logging: int, save: int | None) -> Any:
    model, rows = tiny_bert()
    args = module.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        logging_steps=logging,
        save_strategy="steps" if save else "no",
        save_steps=save or 500,
        per_device_train_batch_size=4,
        report_to=["wandb"],
        use_cpu=True,
        disable_tqdm=True,
    )
    return module.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows), rows


def test_train_evaluate_predict_is_one_wandb_run(
    offline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate() and predict() after train() log into the W&B run train() started (one run
    id; config sent once), with eval/ and test/ metrics, each call's part ending cleanly; with
    WANDB_LOG_MODEL=end the trainer writes the final model by itself (the sink wants it) and it
    is uploaded as model-<run id>, alias final_model."""
    monkeypatch.setenv("WANDB_LOG_MODEL", "end")
    out = tmp_path / "out"
    trainer, rows = _train(trainbus, out, steps=4, logging=2, save=None)
    trainer.train()
    trainer.evaluate()
    trainer.predict(rows)
    [run_dir] = (out / "trainbus").iterdir()
    run = OfflineRun(run_dir)
    assert len({r.run_id for r in run.runs}) == 1 and len(run.runs) == 3
    assert run.exits == [0, 0, 0]
    with_config = [r for r in run.runs if "learning_rate" in {i.key for i in r.config.update}]
    assert len(with_config) == 1
    assert [s for s, _ in run.series("train/loss")] == [2, 4]
    assert [s for s, _ in run.series("eval/loss")] == [4]
    assert [s for s, _ in run.series("test/loss")] == [4]
    finals = [a for a in run.artifacts if "final_model" in a.aliases]
    assert finals and {a.name for a in finals} == {f"model-{run.runs[0].run_id}"}
    files = {entry.path for entry in finals[0].manifest.contents}
    assert {"config.json", "model.safetensors"} <= files


def _histogram_points(run: OfflineRun) -> set[tuple[str, int]]:
    return {
        (key, row["train/global_step"])
        for row in run.history
        for key in row
        if key.startswith(("gradients/", "parameters/"))
    }


def _series_points(run: OfflineRun) -> set[tuple[str, int]]:
    return {
        (key, row["train/global_step"])
        for row in run.history
        for key in row
        if key.startswith(("train/", "eval/", "test/")) and not key.endswith("runtime")
    }


@pytest.mark.slow
def test_matches_transformers_wandb_callback(
    offline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same training under transformers' WandbCallback and under trainbus, offline, with
    WANDB_WATCH=all and WANDB_LOG_MODEL=checkpoint: the same metric keys at the same steps,
    the same histogram keys (gradients/<name>, parameters/<name>) at the same steps, the same
    summary scalars and config values, and the same checkpoint and final-model artifacts
    (transformers' extra base_model artifact aside: see the docs)."""
    import wandb

    monkeypatch.setenv("WANDB_WATCH", "all")
    monkeypatch.setenv("WANDB_LOG_MODEL", "checkpoint")
    runs: dict[str, OfflineRun] = {}
    for name, module in (("hf", transformers), ("ours", trainbus)):
        out = tmp_path / name
        out.mkdir()
        monkeypatch.setenv("WANDB_DIR", str(out))
        trainer, rows = _train(module, out / "o", steps=100, logging=50, save=100)
        trainer.train()
        trainer.predict(rows)
        wandb.finish()  # transformers leaves its run open until the process exits
        runs[name] = OfflineRun(out)
    hf, ours = runs["hf"], runs["ours"]
    assert _series_points(ours) == _series_points(hf)
    assert _histogram_points(ours) == _histogram_points(hf)
    assert {k for _, k in _histogram_points(ours)} == {100}
    assert len(_histogram_points(ours)) > 2
    scalars = ("train_runtime", "train_loss", "total_flos", "train_samples_per_second")
    assert all(k in ours.summary and k in hf.summary for k in scalars)
    for key in ("learning_rate", "max_steps", "logging_steps", "hidden_size", "vocab_size"):
        assert ours.config[key] == hf.config[key], key

    def aliases(run: OfflineRun) -> list[set[str]]:
        return sorted(
            ({a for a in art.aliases if a != "latest"} for art in run.artifacts),
            key=sorted,
        )

    assert [a for a in aliases(hf) if a != {"base_model"}] == aliases(ours)
    assert {a.name for a in ours.artifacts} == {f"model-{ours.runs[0].run_id}"}
