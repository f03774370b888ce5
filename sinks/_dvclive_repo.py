"""The DVC side of the DVCLive sink: which repository can hold an experiment, and a ``Live`` that
neither creates a repository nor starts a second experiment for a run that already has one.

Everything here imports DVC or DVCLive, so it is called only from the sink's worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = ["experiment_root", "live_class", "save_experiment"]

log = structlog.get_logger(__name__)

_CONFLICT: Final = "Experiment conflicts with existing experiment"
SAVE_TIMEOUT: Final = 600.0
"""Seconds ``dvc exp save`` may take (it caches DVC-tracked outputs, which can be large)."""


def experiment_root() -> Path | None:
    """The root of the DVC repository around the working directory, when it can save an
    experiment (a git repository with at least one commit, as ``dvc exp save`` needs); else
    ``None``. The working directory is where DVCLive looks for its repository too."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.scm import NoSCM

    try:
        repo = Repo()
    except NotDvcRepoError:
        return None
    try:
        scm = repo.scm
        if isinstance(scm, NoSCM) or scm.no_commits:
            return None
        return Path(repo.root_dir).resolve()
    finally:
        repo.close()


class _DropConflictWarning(logging.Filter):
    """Hides DVCLive's warning that the experiment's name is taken: when a run continues (an
    ``evaluate()`` after ``train()``), the name is taken by that same run, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_CONFLICT)


@contextmanager
def _without_conflict_warning() -> Iterator[None]:
    logger = logging.getLogger("dvclive")
    quiet = _DropConflictWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def live_class() -> Any:
    """DVCLive's ``Live``, changed in two ways the sink needs.

    * Inside a git repository without DVC, ``Live()`` runs ``dvc init`` at the git root and stages
      its files; a metrics sink must not change the user's repository, so that step is skipped
      and DVCLive writes plain files, as it does outside git.
    * ``experiment=<name>`` continues that experiment: ``end()`` saves the session under the same
      name again (DVCLive saves with ``force``), so a run's later ``evaluate()`` or ``predict()``
      updates its experiment instead of creating a second one. DVCLive itself would pick a new
      name because the old one exists.
    * ``dvc.yaml`` inside the session's directory is rewritten whole at each sync, and a
      continued session keeps the artifacts the earlier one declared in it.
    * ``end()`` saves the experiment with ``dvc exp save`` in a child process. DVC's in-process
      save changes the process's working directory to the repository root while it runs, and
      here it runs in a worker thread beside other sinks that may write to relative paths.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvclive.live import Live

    class RunLive(Live):
        def __init__(self, *args: Any, experiment: str | None = None, **kwargs: Any) -> None:
            self._continued_experiment = experiment
            super().__init__(*args, **kwargs)
            if self._resume and self._dvcyaml:
                self._artifacts.update(_saved_artifacts(Path(self.dvc_file)))

        def make_dvcyaml(self) -> None:
            # The file sits in the session's own directory, where DVCLive's merge does not know
            # its own entries and repeats them at every sync: it is ours alone, so write it whole.
            Path(self.dvc_file).unlink(missing_ok=True)
            super().make_dvcyaml()

        def _init_dvc(self) -> None:
            try:
                Repo.find_root()
            except NotDvcRepoError:
                return  # no DVC repository: plain files only
            if self._continued_experiment is None:
                super()._init_dvc()
                return
            with _without_conflict_warning():
                super()._init_dvc()
            self._exp_name = self._continued_experiment

        @property
        def experiment_name(self) -> str | None:
            """The DVC experiment ``end()`` saves to, or ``None`` when it saves none."""
            return self._exp_name if self._save_dvc_exp else None

        def save_dvc_exp(self) -> None:
            repo, name = self._dvc_repo, self._exp_name
            if not self._save_dvc_exp or repo is None or name is None:
                return
            if self._dvcyaml:
                self._include_untracked.append(self.dvc_file)
            ref = save_experiment(
                Path(repo.root_dir), name, self._include_untracked, self._exp_message
            )
            if ref is not None:
                self._experiment_rev = ref

    return RunLive


def _saved_artifacts(dvc_file: Path) -> dict[str, dict[str, Any]]:
    """The ``artifacts`` an earlier session declared in ``dvc_file``, paths made absolute again
    (DVCLive keeps them as logged and writes them relative to the file)."""
    from dvclive.serialize import load_yaml

    if not dvc_file.is_file():
        return {}
    # DVCLive's own YAML reader (the one that wrote the file) has no annotations.
    declared = (load_yaml(dvc_file) or {}).get("artifacts") or {}  # type: ignore[no-untyped-call]
    return {
        name: {**meta, "path": str(dvc_file.parent / meta["path"])}
        for name, meta in declared.items()
        if isinstance(meta, dict) and isinstance(meta.get("path"), str)
    }


def save_experiment(
    root: Path, name: str, include: list[str], message: str | None = None
) -> str | None:
    """Run ``dvc exp save --force --name <name>`` in ``root``, with ``include`` (paths the
    experiment keeps even when git does not track them); the experiment's commit, or ``None``
    with a warning when DVC could not save it (the files are written either way, as DVCLive
    only warns too)."""
    command = [sys.executable, "-m", "dvc", "exp", "save", "--force", "--json", "--name", name]
    for path in sorted({os.path.relpath(Path(p).absolute(), root) for p in include}):
        command += ["--include-untracked", path]
    if message:
        command += ["--message", message]
    try:
        done = subprocess.run(
            command, cwd=root, capture_output=True, text=True, timeout=SAVE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        log.warning("dvc exp save timed out, experiment not saved", experiment=name)
        return None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-500:]
        log.warning("dvc exp save failed, experiment not saved", experiment=name, error=detail)
        return None
    try:
        ref = json.loads(done.stdout.strip().splitlines()[-1])["ref"]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return ref if isinstance(ref, str) else None
