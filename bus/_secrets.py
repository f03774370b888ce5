"""The one rule for secrets: which names hold one, and how to mask them in data and URLs.

Training arguments (``TrainingArguments.to_dict``), the ``RunStarted`` event the trainer builds,
and every sink that logs or uploads text all decide through `is_secret`, so a name is a secret
everywhere or nowhere. It lives in the lowest layer because all three packages above need it.

A name is split into lower-case words (``hub_token``, ``MLFLOW_TRACKING_PASSWORD``, ``apiKey``) and
is a secret when a word names one (``password``, ``passwd``, ``secret``, ``credential``, ``auth``,
``apikey`` ...), when it has ``key`` after a word that makes it a credential (``api_key``,
``COMET_API_KEY``, ``aws_access_key_id``, ``private_key``; not ``label_key``, ``cache_key`` or
``num_key_value_heads``), or when it has the word ``token`` neither followed by an id or count
word nor preceded by a count word (``hub_token`` yes; ``pad_token_id``, ``num_token_seen``,
``max_token``, ``tokenizer_name`` no; the plural ``tokens``, as in
``include_num_input_tokens_seen``, always counts text, never a login). Masking more than needed
costs a readable value; masking less leaks a credential, so doubtful words count as secret.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MASK", "is_secret", "redact", "redact_url"]

MASK: Final = "***"
"""What a secret value is replaced with."""

_SECRET_WORDS: Final = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "oauth",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "secrets",
    }
)
# ``key`` after one of these is a credential (``access_key_id``); after others it names a field
# (``label_key``, ``sort_key``) and stays readable.
_KEY_QUALIFIERS: Final = frozenset(
    {
        "access",
        "account",
        "api",
        "app",
        "client",
        "deploy",
        "encryption",
        "license",
        "master",
        "private",
        "service",
        "session",
        "signing",
        "ssh",
        "storage",
        "subscription",
    }
)
# ``token`` followed by one of these is a token in the NLP sense (``pad_token_id``,
# ``input_token_seen``, ``token_per_second``), not a login.
_TOKEN_ID_WORDS: Final = frozenset(
    {
        *("id", "ids", "index", "indices", "type", "types", "dim"),
        *("count", "counts", "len", "length", "size", "seen", "per", "budget", "limit"),
    }
)
# ``token`` after one of these counts tokens (``num_token``, ``max_token``), not a login.
_TOKEN_COUNT_WORDS: Final = frozenset({"num", "n", "max", "min", "total"})
# Query parameters also carry request signatures and bare keys (``?key=``, ``X-Amz-Signature``).
_QUERY_SECRET_WORDS: Final = frozenset({"key", "sig", "signature"})
_WORD: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_URL_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<info>[^/@\s]+)@")
_QUERY_PARAM: Final = re.compile(r"(?P<key>[?&](?P<name>[^=&#\s]+))=(?P<val>[^&#\s]+)")


def _words(name: str) -> list[str]:
    """``MLFLOW_TRACKING_PASSWORD`` -> mlflow, tracking, password; ``apiKey`` -> api, key."""
    return [word.lower() for word in _WORD.findall(name)]


def _secret_words(words: list[str]) -> bool:
    named = [word for word in words if not word.isdigit()]  # ``api_key_2`` is still a key
    if not named:
        return False
    if not _SECRET_WORDS.isdisjoint(named):
        return True
    following = [*named[1:], ""]
    preceding = ["", *named[:-1]]
    if any(
        word == "token" and after not in _TOKEN_ID_WORDS and before not in _TOKEN_COUNT_WORDS
        for before, word, after in zip(preceding, named, following, strict=True)
    ):
        return True
    return any(
        word in ("key", "keys") and before in _KEY_QUALIFIERS
        for before, word in itertools.pairwise(named)
    )


def is_secret(name: str) -> bool:
    """Whether a field, key or variable called ``name`` holds a secret (see the module doc)."""
    return _secret_words(_words(name))


def redact_url(text: str) -> str:
    """Mask the password of every ``scheme://user:password@host`` and secret query values."""

    def _userinfo(match: re.Match[str]) -> str:
        user, sep, _ = match.group("info").partition(":")
        masked = f"{user}:{MASK}" if sep else MASK
        return f"{match.group('scheme')}{masked}@"

    def _query(match: re.Match[str]) -> str:
        words = _words(match.group("name"))
        if _secret_words(words) or not _QUERY_SECRET_WORDS.isdisjoint(words):
            return f"{match.group('key')}={MASK}"
        return match.group(0)

    return _QUERY_PARAM.sub(_query, _URL_USERINFO.sub(_userinfo, text))


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named keys and URL credentials masked; never mutates it.

    Walks mappings, lists and tuples; strings that look like URLs or queries go through
    `redact_url`. A secret-named key whose value is empty or already a placeholder (Hugging
    Face's ``"<HUB_TOKEN>"``) keeps it, so readers still see that the field was set.
    """
    if isinstance(value, str):
        return redact_url(value) if "://" in value or "=" in value else value
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and is_secret(key) and not _already_masked(item):
                out[key] = MASK
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        items = [redact(item) for item in value]
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _already_masked(value: Any) -> bool:
    """Nothing to hide: empty, or a placeholder such as ``"<HUB_TOKEN>"`` kept as it is."""
    if value is None or value == "" or value is False:
        return True
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")
