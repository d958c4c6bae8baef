"""Fault injection for the local Perspective server (tests and benchmarks).

Each request draws one decision, in this order: over the server's own rate
limit -> 429 (with Retry-After); inside a 429 burst -> 429; then random
connection drop, random 500/503, random malformed 200 body; independently a
fixed delay plus an occasional slow response. Draws come from one seeded RNG
under a lock, so a given arrival order always gets the same faults.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultConfig:
    """What the server does wrong; every rate is a probability per request."""

    rate_limit_qps: float | None = None  # answer 429 above this arrival rate
    retry_after_s: float | None = None  # Retry-After sent with 429s (None: header omitted)
    p_429: float = 0.0  # start of a 429 burst
    burst_429: int = 1  # length of each burst (requests)
    p_5xx: float = 0.0
    p_drop: float = 0.0  # close the connection without answering
    p_malformed: float = 0.0  # 200 with a body that is not valid JSON
    delay_s: float = 0.0  # added to every response
    p_slow: float = 0.0
    slow_s: float = 0.0  # extra delay of a slow response
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("p_429", "p_5xx", "p_drop", "p_malformed", "p_slow"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, got {value}")
        if self.rate_limit_qps is not None and self.rate_limit_qps <= 0:
            raise ValueError("rate_limit_qps must be > 0")
        for name in ("delay_s", "slow_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.burst_429 < 1:
            raise ValueError(f"burst_429 must be >= 1, got {self.burst_429}")


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one request: ``action`` is ``ok``, ``429``, ``5xx``, ``drop`` or ``malformed``."""

    action: str = "ok"
    status: int = 200
    delay_s: float = 0.0


class FaultInjector:
    """Draws a ``FaultDecision`` per request; thread-safe and seeded."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._burst_left = 0
        # Token bucket with a one-request burst, refilled at rate_limit_qps.
        self._tokens = 1.0
        self._last = time.monotonic()

    def decide(self) -> FaultDecision:
        c = self.config
        with self._lock:
            delay = c.delay_s + (c.slow_s if c.p_slow and self._rng.random() < c.p_slow else 0.0)
            if c.rate_limit_qps is not None and not self._take_token(c.rate_limit_qps):
                return FaultDecision("429", 429, delay)
            if self._burst_left > 0:
                self._burst_left -= 1
                return FaultDecision("429", 429, delay)
            if c.p_429 and self._rng.random() < c.p_429:
                self._burst_left = c.burst_429 - 1
                return FaultDecision("429", 429, delay)
            if c.p_drop and self._rng.random() < c.p_drop:
                return FaultDecision("drop", 0, delay)
            if c.p_5xx and self._rng.random() < c.p_5xx:
                return FaultDecision("5xx", self._rng.choice((500, 503)), delay)
            if c.p_malformed and self._rng.random() < c.p_malformed:
                return FaultDecision("malformed", 200, delay)
            return FaultDecision("ok", 200, delay)

    def _take_token(self, qps: float) -> bool:
        now = time.monotonic()
        self._tokens = min(1.0, self._tokens + (now - self._last) * qps)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
