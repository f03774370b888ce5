"""How long a sink waits before trying a failed batch again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from trainbus.bus._errors import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, floored by the server's ``Retry-After``.

    Retryable errors are retried for as long as the run lasts (the close deadline bounds the
    end); a sink that raises an unexpected exception ``max_crashes`` times in a row is disabled,
    because a bug does not fix itself by waiting.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.25
    max_crashes: int = 3

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ConfigurationError(
                "RetryPolicy needs 0 <= initial_backoff <= max_backoff, got "
                f"initial_backoff={self.initial_backoff} and max_backoff={self.max_backoff}."
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}.")
        if self.max_crashes < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_crashes must be at least 1, got {self.max_crashes}."
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts failures, from 1)."""
        try:
            grown = self.initial_backoff * self.multiplier ** (attempt - 1)
        except OverflowError:  # a very long outage: past ~1000 failures 2.0**n overflows
            grown = self.max_backoff
        base = min(self.max_backoff, grown)
        jittered = base * (1.0 - self.jitter * random.random())
        return max(jittered, retry_after or 0.0)
