"""report_to=["dvclive"] on transformers' Trainer and on ours, each in its own git + DVC
repository, read back with DVC's own commands: the same experiment, metric names, params and
model artifact; every difference is one the DVCLive integration page lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.sinks.dvc_repo import experiments, isolate_dvc, make_repo, run_dvc
from tests.support.hf_differential import run_script

pytest.importorskip("dvclive")
pytest.importorskip("transformers")

METRICS = "dvclive/metrics.json"
PARAMS = "dvclive/params.yaml"

# Deliberate, and listed on the integration page: ours records predict()'s metrics.
ONLY_OURS = {"test"}


def _tsv_names(repo: Path) -> set[str]:
    """The metric histories DVCLive wrote (``plots/metrics/<name>.tsv``)."""
    base = repo / "dvclive" / "plots" / "metrics"
    return {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.tsv")}


def _plot_steps(repo: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric as ``dvc plots show`` reads it."""
    data = run_dvc("plots", "show", cwd=repo)["data"]
    key = f"dvclive/plots/metrics/{name}.tsv"
    points = data[key][0]["content"]["data"]["values"]
    column = name.rsplit("/", 1)[-1]
    return [(int(p["step"]), float(p[column])) for p in points]


def _artifacts(repo: Path) -> dict[str, Any]:
    """Every artifact DVC's own reader finds in the repository's dvc.yaml files."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {
            name: artifact
            for per_file in dvc.artifacts.read().values()
            for name, artifact in per_file.items()
        }


@pytest.mark.slow
def test_same_experiment_as_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train, evaluate and predict with HF_DVCLIVE_LOG_MODEL=true: both runs are one DVC
    experiment with the same metric histories (ours at global steps, theirs at log-call
    counts), the same params and a model artifact named ``last``; ours also holds the later
    evaluation and the prediction's metrics in that experiment."""
    isolate_dvc(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "true")
    repos: dict[str, Path] = {}
    history: dict[str, list[dict[str, Any]]] = {}
    for flavour in ("transformers", "trainbus"):
        repo = make_repo(tmp_path / flavour, ignore="out/\n")
        monkeypatch.chdir(repo)
        result = run_script(
            "dvclive_report",
            flavour,
            repo,
            SAVE_LAST=flavour == "trainbus",  # type: ignore[arg-type]
        )
        repos[flavour], history[flavour] = repo, result["log_history"]
    theirs, ours = repos["transformers"], repos["trainbus"]

    # One experiment each, found by `dvc exp show`.
    [their_exp] = experiments(theirs).values()
    [our_exp] = experiments(ours).values()

    # The same metric histories, under DVCLive's names for Hugging Face.
    assert _tsv_names(ours) == _tsv_names(theirs)
    assert "eval/loss" in _tsv_names(ours) and "loss" in _tsv_names(ours)

    # Theirs counts log calls from 0; ours is the global step of each training log.
    their_loss, our_loss = _plot_steps(theirs, "loss"), _plot_steps(ours, "loss")
    train_steps = [e["step"] for e in history["trainbus"] if "loss" in e]
    assert [s for s, _ in our_loss] == train_steps == [1, 2, 3, 4]
    assert len(their_loss) == len(our_loss)
    assert [v for _, v in our_loss] == pytest.approx([v for _, v in their_loss], rel=1e-4)

    # The experiment's summary: the same keys, ours ends on the last global step and holds the
    # evaluation after train() and predict()'s metrics.
    their_summary = their_exp["metrics"][METRICS]["data"]
    our_summary = our_exp["metrics"][METRICS]["data"]
    assert set(our_summary) == set(their_summary) | ONLY_OURS
    assert our_summary["step"] == 4
    assert set(our_summary["test"]) == {"loss", "runtime", "samples_per_second", "steps_per_second"}
    final_eval = [e for e in history["trainbus"] if "eval_loss" in e][-1]
    assert our_summary["eval"]["loss"] == pytest.approx(final_eval["eval_loss"])

    # `dvc metrics show` in the workspace sees the same file.
    workspace = run_dvc("metrics", "show", cwd=ours)
    assert workspace[""]["data"][METRICS]["data"] == our_summary

    # The same params: the training arguments. One value differs because the trainers' own
    # to_dict() differ (not the sink): transformers writes its accelerator defaults, ours None.
    their_params = their_exp["params"][PARAMS]["data"]
    our_params = our_exp["params"][PARAMS]["data"]
    assert set(their_params) <= set(our_params)
    differing = {k for k, v in their_params.items() if our_params[k] != v}
    assert differing <= {"accelerator_config"}
    assert our_params["learning_rate"] == their_params["learning_rate"]

    # The final model: copied into dvclive/artifacts, declared as model "last" in both.
    for repo in (theirs, ours):
        last = _artifacts(repo)["last"]
        assert last.type == "model"
        assert (repo / "dvclive" / "artifacts" / "last.dvc").is_file()
        assert (repo / "dvclive" / "artifacts" / "last" / "model.safetensors").is_file()
