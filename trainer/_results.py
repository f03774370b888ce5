"""The metrics files and the metrics table that example scripts write after ``train()``.

Hugging Face's example scripts end with ``log_metrics`` (a table on stdout), ``save_metrics``
(``<split>_results.json``, merged into ``all_results.json``) and ``save_state``; downstream tools
read those files, so their names, layout (4-space indent, sorted keys) and merge rule are kept.
Each file is replaced atomically: a crash mid-write leaves the previous results, not half a file.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from trainbus.bus._files import replace_file

__all__ = ["ALL_RESULTS_NAME", "format_metrics", "metrics_table", "results_name", "save_results"]

ALL_RESULTS_NAME: Final = "all_results.json"


def results_name(split: str) -> str:
    """The file one split's metrics go to: ``train_results.json``, ``eval_results.json``…"""
    return f"{split}_results.json"


def _duration(seconds: float) -> str:
    """``h:mm:ss.cc``: whole seconds as a ``timedelta``, then hundredths."""
    hundredths = int(abs(seconds - int(seconds)) * 100)
    return f"{datetime.timedelta(seconds=int(seconds))}.{hundredths:02d}"


def format_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics made readable: memory in MB, runtimes as durations, ``total_flos`` in GF (2^30),
    other floats to 4 decimals."""
    readable: dict[str, Any] = {}
    for key, value in metrics.items():
        if "_mem_" in key and isinstance(value, int):
            value = f"{value >> 20}MB"
        elif "_runtime" in key and isinstance(value, int | float) and math.isfinite(value):
            value = _duration(float(value))
        elif key == "total_flos" and isinstance(value, int | float) and math.isfinite(value):
            value = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            value = round(value, 4)
        readable[key] = value
    return readable


def metrics_table(split: str, metrics: Mapping[str, Any]) -> str:
    """The block ``log_metrics`` prints: a header, then one aligned ``key = value`` per line."""
    readable = format_metrics(metrics)
    lines = [f"***** {split} metrics *****"]
    if readable:
        key_width = max(len(str(key)) for key in readable)
        value_width = max(len(str(value)) for value in readable.values())
        lines += [
            f"  {key: <{key_width}} = {readable[key]!s:>{value_width}}" for key in sorted(readable)
        ]
    return "\n".join(lines)


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, indent=4, sort_keys=True).encode("utf-8")


def save_results(
    output_dir: str | Path, split: str, metrics: Mapping[str, Any], *, combined: bool
) -> Path:
    """Write ``<split>_results.json`` and, when ``combined``, merge into ``all_results.json``.

    Returns the split's file. The directory is created if needed.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / results_name(split)
    replace_file(path, _dump(metrics))
    if combined:
        everything = directory / ALL_RESULTS_NAME
        merged: dict[str, Any] = {}
        if everything.is_file():
            loaded = json.loads(everything.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                merged = loaded
        merged.update(metrics)
        replace_file(everything, _dump(merged))
    return path
