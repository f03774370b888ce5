"""What the ClearML sink needs from the ClearML SDK beyond its plain calls: three repairs.

Everything here runs in the sink's worker thread, after ``clearml`` was imported there.

* **No hang at close, no 9 ms per scalar.** By default on Linux the SDK forks a reporter process
  and detects the git repository in a background thread; the thread's ``git`` child can inherit a
  pipe from the forked reporter, and ``Task.close()`` then waits for it for minutes. Each
  ``report_scalar`` also waits on the reporter process every hundred points. Before the sink
  creates its task it sets the two SDK options that avoid both (``report_use_subprocess`` and
  ``vcs_repo_detect_async``, false) through the SDK's configuration overrides: the user's
  ``clearml.conf`` and credentials stay in force, the repository is still recorded (at
  ``Task.init``, in the worker thread), and reports are written by a thread of this process.
* **Output models offline.** ClearML 2.1's ``OutputModel.update_weights_package`` fails in
  offline mode (its placeholder model has no ``locked`` nor ``edit``), although the SDK has an
  offline path for model weights that ``Task.import_offline_session`` reads back. The sink packs
  the directory as the SDK would and hands it to that path.
* **Continuing an offline task.** A task continued offline starts with no offline models, and its
  next save would drop those of the earlier session from ``task.json``; they are restored first.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Final

__all__ = [
    "IN_PROCESS_REPORTING",
    "log_model_package",
    "offline_models",
    "prefer_in_process_reporting",
    "remove_model",
    "reports_in_process",
    "restore_offline_models",
]

IN_PROCESS_REPORTING: Final = {"report_use_subprocess": False, "vcs_repo_detect_async": False}
"""The ``sdk.development`` options the sink sets (see the module docstring)."""


def prefer_in_process_reporting() -> None:
    """Merge `IN_PROCESS_REPORTING` into the SDK's configuration overrides, keeping any others.

    A no-op when the configuration already says so. Options the SDK has read already (a task
    was created earlier in the process) keep their value: `reports_in_process` tells.
    """
    from clearml.config import ConfigSDKWrapper, ConfigWrapper

    wanted = {f"development.{key}": value for key, value in IN_PROCESS_REPORTING.items()}
    if all(ConfigSDKWrapper.get(key, None) == value for key, value in wanted.items()):
        return
    ConfigWrapper.get("sdk")  # loads the configuration, so the earlier overrides are known
    config: Any = ConfigWrapper._config  # the loaded Config; no accessor exists
    earlier = list(getattr(config, "_overrides_configs", None) or [])
    ConfigWrapper.set_overrides(*earlier, {"sdk": {"development": dict(IN_PROCESS_REPORTING)}})
    ConfigSDKWrapper.clear_config_impl()  # its cached "sdk" section predates the overrides


def reports_in_process(task_class: Any) -> bool:
    """Whether tasks of this process report from a thread (no forked reporter, no hang)."""
    return not bool(task_class._report_subprocess_enabled)


def log_model_package(task: Any, *, name: str, directory: Path, iteration: int) -> str:
    """Register ``directory`` as an output model of ``task`` named ``name``; returns its id.

    Online this is ``OutputModel.update_weights_package``, waiting for the upload; offline the
    package goes to the SDK's offline model list (see the module docstring).
    """
    from clearml import OutputModel

    model = OutputModel(task=task, name=name)
    model.connect(task=task, name=name)
    if not task.is_offline():
        model.update_weights_package(
            weights_path=str(directory),
            target_filename=name,
            iteration=iteration,
            auto_delete_file=False,
            async_enable=False,
        )
        return str(model.id)
    package = _pack(directory)
    try:
        model._update_weights_offline(  # the SDK's own offline path
            weights_filename=str(package),
            target_filename=f"{name}.zip",
            iteration=iteration,
            is_package=True,
        )
    finally:
        package.unlink(missing_ok=True)  # the SDK copied it into the offline session
    return str(model.id)


def remove_model(task: Any, model_id: str) -> None:
    """Delete an output model and its weights (online: ``Model.remove``; offline: the entry)."""
    if not task.is_offline():
        from clearml.model import Model

        Model.remove(model_id, delete_weights_file=True, force=True, raise_on_errors=True)
        return
    models: list[dict[str, Any]] = task._offline_output_models
    for entry in [m for m in models if m.get("id") == model_id]:
        models.remove(entry)
        weights = (entry.get("weights") or {}).get("weights_filename")
        if weights:
            Path(weights).unlink(missing_ok=True)


def offline_models(task_id: str) -> list[dict[str, Any]]:
    """The offline models an earlier session of the task recorded in its ``task.json``.

    Read before the task is continued: continuing it rewrites the file without them.
    """
    from clearml.config import get_offline_dir

    try:
        stored = json.loads((get_offline_dir(task_id=task_id) / "task.json").read_text())
    except (OSError, ValueError):
        return []
    return [m for m in stored.get("offline_output_models") or [] if isinstance(m, dict)]


def restore_offline_models(task: Any, models: list[dict[str, Any]]) -> None:
    """Give a continued offline ``task`` back the models its earlier sessions recorded."""
    if not task.is_offline() or not models:
        return
    known: list[dict[str, Any]] = task._offline_output_models  # no public accessor
    ids = {m.get("id") for m in known}
    known[:0] = [m for m in models if m.get("id") not in ids]
    task._edit()  # rewrite task.json with them now, not only at the next change


def _pack(directory: Path) -> Path:
    """A zip of every file under ``directory`` by relative name, as the SDK packs a package."""
    fd, name = tempfile.mkstemp(prefix="model_package.", suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", allowZip64=True, compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=path.relative_to(directory).as_posix())
    return Path(name)
