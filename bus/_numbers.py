"""The one rule for a number of seconds a user hands in (flush, close and sync deadlines).

A NaN compares false with everything, so a deadline of NaN never passes and a flush waits
forever; a negative one has passed before it starts. Both are refused here, once, with the field's
name. Infinity stays valid: it is how "no limit" is spelt (``trainbus sync`` without
``--timeout``).
"""

from __future__ import annotations

import math

from trainbus.bus._errors import ConfigurationError

__all__ = ["check_seconds"]


def check_seconds(field: str, value: object) -> float:
    """``value`` as seconds, or a `ConfigurationError` naming ``field``.

    Args:
        field: how the user spelt the setting (``"Bus(close_deadline=...)"``, ``"--timeout"``).
        value: the number given; ``inf`` means no limit.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise ConfigurationError(
            f"{field} must be a number of seconds >= 0 (inf for no limit), got {value!r}."
        )
    return float(value)
