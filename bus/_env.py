"""The one reader of settings from environment variables: text, booleans, whole numbers and choices.

Used by the sinks (Hugging Face's integration variables), the orchestrator
(``TRAINBUS_SINK_PROCESS``, ``TRAINBUS_RANK_JOURNAL``) and the trainer (torchrun's ``LOCAL_RANK``,
``RANK``, ``WORLD_SIZE``), so every variable accepts the same spellings and a bad value gets the
same one-line error.

Booleans accept Hugging Face's true values (``1``, ``ON``, ``YES``, ``TRUE``), their false
counterparts and the empty string (false), in any case and with surrounding blanks. Where Hugging
Face quietly reads any other value as false, a value here that is neither raises a
`ConfigurationError`: ``DISABLE_MLFLOW_INTEGRATION=ture`` should not silently mean "enabled".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from trainbus.bus._errors import ConfigurationError

__all__ = ["SINK_PROCESS_VARIABLE", "env_choice", "env_flag", "env_int", "env_str"]

SINK_PROCESS_VARIABLE: Final = "TRAINBUS_SINK_PROCESS"
"""Where the ``report_to`` sinks run: true moves them all to the sink process, false keeps them
all in the training process; unset lets each sink choose (``Sink.prefers_sink_process``)."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_EXPECTED_FLAG: Final = "expected one of 1/0/true/false/yes/no/on/off"


def env_str(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value with surrounding blanks removed; ``None`` when unset or empty.

    Args:
        env: the environment to read (``os.environ`` or a copy handed in by the caller).
        name: the variable.
    """
    value = env.get(name)
    if value is None:
        return None
    return value.strip() or None


def env_flag(
    env: Mapping[str, str], name: str, *, default: bool = False, lenient: bool = False
) -> bool:
    """A boolean variable (see the module docstring for the spellings).

    Args:
        env: the environment to read.
        name: the variable.
        default: the answer when the variable is unset; set but empty means false.
        lenient: a value that is no boolean spelling reads as ``default`` instead of raising. For
            a sink's ``is_available`` under ``report_to="all"``: its ``from_env`` reports the bad
            value when the sink is really built, and ``"all"`` must not fail for it.

    Raises:
        ConfigurationError: the value is not a boolean spelling (unless ``lenient``); the message
            names the variable.
    """
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if lenient:
        return default
    raise ConfigurationError(f"{name}={raw!r} is not a boolean; {_EXPECTED_FLAG}")


def env_choice(env: Mapping[str, str], name: str, choices: Sequence[str], default: str) -> str:
    """One of a few words (case and surrounding blanks ignored); ``default`` when unset or empty.

    Args:
        env: the environment to read.
        name: the variable.
        choices: the accepted words, lower case.
        default: the answer when the variable is unset or empty.

    Raises:
        ConfigurationError: the value is none of ``choices``; the message names the variable.
    """
    raw = env_str(env, name)
    if raw is None:
        return default
    value = raw.lower()
    if value not in choices:
        raise ConfigurationError(
            f"{name}={raw!r} is not recognised; expected one of {'/'.join(choices)}"
        )
    return value


def env_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    """A whole-number variable, at least ``minimum``; ``None`` when unset or empty.

    Args:
        env: the environment to read.
        name: the variable.
        minimum: the smallest value accepted.

    Raises:
        ConfigurationError: the value is not a whole number, or is below ``minimum``.
    """
    raw = env_str(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a whole number; expected an integer >= {minimum}"
        ) from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} is too small; expected an integer >= {minimum}")
    return value
