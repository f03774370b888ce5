"""The ``mlflow.*`` run tags: our own reading (REST path) against MLflow's context providers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trainbus.sinks._mlflow_context import context_tags

pytest.importorskip("mlflow")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _mlflows_own() -> dict[str, str]:
    """MLflow's default and git providers, fresh (the registry's git provider caches its
    answer for the whole process)."""
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.tracking.context.git_context import GitRunContext

    git = GitRunContext()
    return {**DefaultRunContext().tags(), **(git.tags() if git.in_context() else {})}


@pytest.mark.parametrize("in_git", [True, False])
def test_own_tags_equal_mlflows_providers(
    in_git: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a script inside a git repository (commit, branch, remote) and outside one, the tags
    worked out without mlflow are the ones MLflow's providers give ``mlflow.start_run``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    repo = tmp_path / "project"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text("print('hi')\n")
    if in_git:
        _git(repo, "init", "-q", "-b", "exp")
        _git(repo, "remote", "add", "origin", "https://example.invalid/team/project.git")
        _git(repo, "add", "train.py")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr("sys.argv", [str(script)])
    ours = context_tags(use_mlflow=False)
    assert ours == _mlflows_own()
    assert ours["mlflow.source.name"] == str(script)
    assert ("mlflow.source.git.commit" in ours) == in_git
    if in_git:
        assert ours["mlflow.source.git.branch"] == "exp"
        assert ours["mlflow.source.git.repoURL"].endswith("team/project.git")


def test_tracking_username_names_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_USERNAME is the run's user, as MLflow's default provider reads it."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    assert context_tags(use_mlflow=False)["mlflow.user"] == "ada"
    assert _mlflows_own()["mlflow.user"] == "ada"
