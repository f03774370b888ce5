"""Keeping secrets out of logs, journals and saved arguments.

``redact`` walks plain data (mappings, lists, strings) and masks two things: the values of keys
that name a secret (``api_key``, ``hub_token``, ``MLFLOW_TRACKING_PASSWORD`` ...) and the
password part of URLs (``https://user:pw@host`` -> ``https://user:***@host``), plus secret-named
query parameters. It never mutates its input. The orchestrator applies it to arguments before
they enter ``RunStarted``; sinks apply it again to anything they log or upload as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MASK", "is_secret_key", "redact", "redact_url"]

MASK: Final = "***"

_SECRET_KEY: Final = re.compile(
    r"(api[_-]?key|apikey|token|secret|password|passwd|credential|private[_-]?key|"
    r"access[_-]?key|auth)",
    re.IGNORECASE,
)
_NOT_SECRET: Final = frozenset({"tokenizer", "max_tokens", "num_tokens", "pad_token_id"})
_URL_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<info>[^/@\s]+)@")
_QUERY_SECRET: Final = re.compile(
    r"(?P<key>[?&](?:[^=&#\s]*(?:token|key|secret|password|signature|sig)[^=&#\s]*))=(?P<val>[^&#\s]+)",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (``hub_token`` yes, ``tokenizer_name`` no)."""
    lowered = key.lower()
    if lowered in _NOT_SECRET or lowered.endswith(("_token_id", "_tokens", "tokenizer")):
        return False
    if "tokenizer" in lowered:
        return False
    return _SECRET_KEY.search(key) is not None


def redact_url(text: str) -> str:
    """Mask the password of every ``scheme://user:password@host`` and secret query values."""

    def _userinfo(match: re.Match[str]) -> str:
        info = match.group("info")
        user, sep, _ = info.partition(":")
        masked = f"{user}:{MASK}" if sep else MASK
        return f"{match.group('scheme')}{masked}@"

    text = _URL_USERINFO.sub(_userinfo, text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}={MASK}", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` with secrets masked; see the module docstring for what counts."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value or "=" in value else value
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and is_secret_key(key) and not _already_masked(item):
                out[key] = MASK
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        items = [redact(item) for item in value]
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _already_masked(value: Any) -> bool:
    """Nothing to hide: empty, or HF's own placeholder (``"<HUB_TOKEN>"``) kept as it is."""
    if value in (None, "", False):
        return True
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")
