"""Shaping logged values the way Hugging Face's integrations do, so dashboards look the same.

Pure functions only: every sink calls them on its worker, never on the training thread.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from trainbus.bus._events import MetricValue

__all__ = ["flatten", "numeric_items", "rewrite_logs", "sanitize_key"]

_PREFIXES: Final = (("eval_", "eval/"), ("test_", "test/"))
_MLFLOW_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_\-. :/]")


def rewrite_logs(logs: Mapping[str, MetricValue]) -> dict[str, MetricValue]:
    """Prefix keys as HF's ``rewrite_logs`` does (``eval_loss`` -> ``eval/loss``, ``loss`` ->
    ``train/loss``), so runs logged by trainbus and by ``transformers`` chart side by side."""
    return {_rewritten(key): value for key, value in logs.items()}


@functools.lru_cache(maxsize=8192)
def _rewritten(key: str) -> str:
    """One key's dashboard name; cached, as a run logs the same few keys at every step."""
    for prefix, replacement in _PREFIXES:
        if key.startswith(prefix):
            return replacement + key[len(prefix) :]
    return "train/" + key


def numeric_items(logs: Mapping[str, MetricValue]) -> list[tuple[str, float]]:
    """The entries a metric store can take: ints and floats (bools count as ints, as in HF).

    Strings and ``None`` are left out; non-finite floats are kept because the stores accept them.
    """
    return [
        (key, float(value))
        for key, value in logs.items()
        if isinstance(value, (int, float)) and not isinstance(value, str)
    ]


def sanitize_key(key: str) -> str:
    """Replace what MLflow refuses in a metric or param name with ``_`` (HF's rule)."""
    return _MLFLOW_UNSAFE.sub("_", key)


def flatten(params: Mapping[str, Any], *, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, sep=sep, prefix=name))
        else:
            out[name] = value
    return out


def param_text(value: Any) -> str:
    """A parameter value as the string the tracker stores; JSON for containers so it reads back."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)
