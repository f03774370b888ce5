"""A git + DVC repository for the DVCLive tests, and DVC's own commands to read it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = ["experiments", "git", "isolate_dvc", "make_repo", "run_dvc"]


def isolate_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC and git write their caches and read their config under a fresh home, send nothing,
    and sign commits (``dvc exp save`` commits) with a fixed identity."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for name, value in {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("DVC_EXP_NAME", "DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVCLIVE_TEST"):
        monkeypatch.delenv(name, raising=False)


def git(*args: str, cwd: Path) -> str:
    """Run git in ``cwd``; its standard output."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def run_dvc(*args: str, cwd: Path) -> Any:
    """Run the ``dvc`` command line in ``cwd`` with ``--json``; its parsed output."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def make_repo(path: Path, *, ignore: str = "") -> Path:
    """``git init`` + ``dvc init`` + one commit (experiments need a baseline); ``ignore`` is
    the ``.gitignore`` committed with it."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", cwd=path)
    from dvc.repo import Repo

    Repo.init(str(path)).close()
    (path / ".gitignore").write_text(ignore)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "baseline", cwd=path)
    return path


def experiments(repo: Path) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``: each experiment's name to its ``data`` (params, metrics)."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in run_dvc("exp", "show", cwd=repo):
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                found[rev["name"]] = rev["data"]
    return found
