"""Retry policy: bounded attempts, exponential back-off with full jitter, Retry-After."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field


@dataclass
class RetryPolicy:
    """How often and how long to wait between attempts at one text.

    The wait before attempt ``k + 1`` is uniform in ``[0, min(max_delay_s,
    base_delay_s * 2**(k-1))]`` (full jitter, so workers hit by the same fault
    do not retry in lockstep), and never shorter than the server's Retry-After.
    """

    max_attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("back-off delays must be >= 0")

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        jittered = self.rng.uniform(0.0, cap)
        return max(jittered, retry_after_s or 0.0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    # A hostile or broken header must not park the client for hours.
    return min(max(seconds, 0.0), 3600.0)
