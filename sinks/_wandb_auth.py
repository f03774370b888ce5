"""Whether W&B can start without asking for a login, decided before training starts.

An online W&B run without credentials fails at ``wandb.init``, which the sink only reaches at its
first write: training would run to the end with every batch refused. The same rule decides
whether ``report_to="all"`` picks W&B (``WandbSink.is_available``) and whether naming it is an
error (``WandbSink.from_env``).

W&B finds credentials where its SDK looks for them: ``WANDB_API_KEY`` or
``WANDB_IDENTITY_TOKEN_FILE``, then the ``.netrc`` entry ``wandb login`` writes for the server
(``WANDB_BASE_URL``), then an ``api_key`` in its settings files. Without ``WANDB_MODE``, the mode
is the one those settings files give (``wandb offline`` writes it there), else online.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from trainbus.bus._env import env_str

__all__ = ["LOGIN_HINT", "needs_login"]

LOGIN_HINT: Final = (
    "set WANDB_API_KEY, run 'wandb login', or set WANDB_MODE=offline to log to local files "
    "('wandb sync' uploads them later)"
)
_NO_LOGIN_MODES: Final = frozenset({"offline", "dryrun", "disabled"})


def needs_login(env: Mapping[str, str], mode: str | None) -> bool:
    """Whether W&B would start in ``mode`` (``None``: the SDK's default) needing credentials
    that are nowhere to be found."""
    if mode in _NO_LOGIN_MODES:
        return False
    if env_str(env, "WANDB_API_KEY") or env_str(env, "WANDB_IDENTITY_TOKEN_FILE"):
        return False
    settings = _sdk_settings(env)
    if mode is None and str(settings.mode) in _NO_LOGIN_MODES:
        return False
    if settings.api_key:
        return False
    wbauth: Any = importlib.import_module("wandb.sdk.lib.wbauth")
    try:
        key = wbauth.read_netrc_auth(host=env_str(env, "WANDB_BASE_URL") or settings.base_url)
    except Exception:  # a malformed entry is the SDK's to report, at init
        return False
    return key is None


def _sdk_settings(env: Mapping[str, str]) -> Any:
    """The SDK's settings from its settings files and ``env``, as ``wandb.init`` would read them
    (a fresh object: the SDK's process-wide one may predate ``env``)."""
    settings_module: Any = importlib.import_module("wandb.sdk.wandb_settings")
    settings = settings_module.Settings(silent=True)  # no "Loading settings from" line
    config_dir = env_str(env, "WANDB_CONFIG_DIR")
    system = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    settings.settings_system = str(system / "settings")
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(env))
    return settings
