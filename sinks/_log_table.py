"""A log history as one HTML table: the Flyte sink's "Log History" deck, with no plugin needed.

Hugging Face renders ``state.log_history`` through pandas and the ``flytekitplugins-deck-standard``
renderer, and shows nothing when either is missing. The table is simple enough to write here:
one column per key in the order keys first appear, one row per entry, an empty cell where an
entry lacks a key (pandas shows ``NaN``). Every key and value is HTML-escaped, since metric names
come from user code and the deck is a web page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["log_table_html"]

_STYLE: Final = (
    "<style>.trainbus-log-history{border-collapse:collapse;font-family:sans-serif;"
    "font-size:13px}.trainbus-log-history th,.trainbus-log-history td{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right}.trainbus-log-history th{background:#f2f2f2}</style>"
)


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return str(value)


def log_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an HTML table (with its own small style sheet); ``""`` when there are none.

    Args:
        rows: log entries, each a mapping of key to value (a Hugging Face ``log_history`` item).
    """
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_cell(row[key])) if key in row else ''}</td>" for key in columns
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'{_STYLE}<table class="trainbus-log-history"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
