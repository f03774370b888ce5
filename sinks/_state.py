"""Small JSON state files a sink keeps in the run directory (remote ids, replay watermarks)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainbus.bus._files import replace_file

__all__ = ["load_state", "save_state"]


def load_state(path: Path) -> dict[str, Any]:
    """The saved object, or an empty one when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Replace the file atomically: a crash leaves the old or the new state, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, (json.dumps(dict(state), indent=2, sort_keys=True) + "\n").encode())
