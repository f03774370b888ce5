"""Reading integration settings from environment variables, with HF's spelling of booleans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from trainbus.bus._errors import ConfigurationError

__all__ = ["env_flag", "env_int", "env_str"]

_TRUE: Final = frozenset({"1", "ON", "YES", "TRUE"})
_FALSE: Final = frozenset({"0", "OFF", "NO", "FALSE", ""})


def env_str(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value with surrounding blanks removed; ``None`` when unset or empty."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def env_flag(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    """A boolean variable: ``1``/``ON``/``YES``/``TRUE`` or ``0``/``OFF``/``NO``/``FALSE``."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().upper()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        f"Environment variable {name} must be one of 1/ON/YES/TRUE or 0/OFF/NO/FALSE, got {raw!r}."
    )


def env_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    """A whole-number variable, at least ``minimum``; ``None`` when unset or empty."""
    raw = env_str(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"Environment variable {name} must be a whole number, got {raw!r}."
        ) from None
    if value < minimum:
        raise ConfigurationError(
            f"Environment variable {name} must be at least {minimum}, got {value}."
        )
    return value
