"""A thread-safe global rate limiter shared by every worker of a client.

Requests are spaced at least ``1 / qps`` seconds apart (no bursts), so any
window of ``w`` seconds holds at most ``ceil(w * qps)`` request starts. A
``Retry-After`` from the server pauses all workers at once via ``pause``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Hands out request slots ``1 / qps`` seconds apart to any number of threads."""

    def __init__(
        self,
        qps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not qps > 0:
            raise ValueError(f"qps must be > 0, got {qps}")
        self.qps = float(qps)
        self._interval = 1.0 / self.qps
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = float("-inf")
        self._paused_until = float("-inf")

    def acquire(self) -> float:
        """Block until this caller may send one request; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot, self._paused_until)
            self._next_slot = slot + self._interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def pause(self, seconds: float) -> None:
        """Hold back every slot not yet handed out for ``seconds`` from now."""
        if seconds <= 0:
            return
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def __repr__(self) -> str:
        return f"RateLimiter(qps={self.qps})"
