"""The ``mlflow.*`` tags a run gets when ``mlflow.start_run`` creates it.

Hugging Face's callback creates its run with ``mlflow.start_run``, which asks MLflow's run
context providers for tags: who ran it (``mlflow.user``), what ran (``mlflow.source.name``, the
script; ``mlflow.source.type``, ``LOCAL``), the git commit, branch and remote of that script when
it lies in a repository, and Databricks notebook or job details inside Databricks. The sink
creates its run through the store API, which adds none of these, so it asks the same providers
(``context_tags``) on the client path; on the REST path (which needs no mlflow package) the
default and git tags are worked out here, the way those providers do. Blocking (git): call it
from a worker thread.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["context_tags"]

USER: Final = "mlflow.user"
SOURCE_NAME: Final = "mlflow.source.name"
SOURCE_TYPE: Final = "mlflow.source.type"
GIT_COMMIT: Final = "mlflow.source.git.commit"
GIT_BRANCH: Final = "mlflow.source.git.branch"
GIT_REPO_URL: Final = "mlflow.source.git.repoURL"
_GIT_TIMEOUT: Final = 10.0


def context_tags(*, use_mlflow: bool, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags MLflow's context providers give a new run in this process.

    Args:
        use_mlflow: ask MLflow's own providers (the client path, where mlflow is imported
            anyway; inside Databricks they add notebook and job tags). Otherwise the default and
            git tags are worked out here, sparing the REST path an import of seconds.
        env: the environment for ``MLFLOW_TRACKING_USERNAME``; ``os.environ`` when ``None``.
    """
    if use_mlflow:
        from mlflow.tracking.context.registry import resolve_tags

        return {str(k): str(v) for k, v in resolve_tags().items()}
    return _own_tags(os.environ if env is None else env)


def _own_tags(env: Mapping[str, str]) -> dict[str, str]:
    """MLflow's default and git providers, for a process without the mlflow package."""
    main = sys.argv[0] if sys.argv and sys.argv[0] else None
    tags = {
        USER: env.get("MLFLOW_TRACKING_USERNAME") or _user(),
        SOURCE_NAME: main or "<console>",
        SOURCE_TYPE: "LOCAL",
    }
    if main is not None:
        tags.update(_git_tags(Path(main)))
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (ImportError, KeyError, OSError):
        return "unknown"


def _git_tags(main: Path) -> dict[str, str]:
    """Commit, branch and remote URL of the repository holding ``main``; none outside one."""
    folder = main.resolve().parent if main.exists() else Path.cwd()
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return {}
    tags = {GIT_COMMIT: commit}
    branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD")
    if branch is not None and branch != "HEAD":
        tags[GIT_BRANCH] = branch
    remote = _git(folder, "remote", "get-url", "origin")
    if remote is not None:
        tags[GIT_REPO_URL] = remote
    return tags


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None
