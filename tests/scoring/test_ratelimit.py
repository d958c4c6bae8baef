from __future__ import annotations

import threading
import time

import pytest

from megatron_detox.scoring.ratelimit import RateLimiter
from megatron_detox.scoring.retry import RetryPolicy, parse_retry_after


def test_concurrent_acquires_are_spaced() -> None:
    qps = 50.0
    limiter = RateLimiter(qps)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(8):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    # 32 slots 20 ms apart: at least 31 intervals, minus scheduling slack per stamp.
    assert stamps[-1] - stamps[0] >= 31 / qps - 0.02
    window_counts = [sum(1 for s in stamps if t <= s < t + 0.2) for t in stamps]
    assert max(window_counts) <= 0.2 * qps + 1


def test_pause_holds_back_everyone() -> None:
    now = [100.0]
    slept: list[float] = []
    limiter = RateLimiter(10, clock=lambda: now[0], sleep=slept.append)
    assert limiter.acquire() == 0
    limiter.pause(2.0)
    assert limiter.acquire() == pytest.approx(2.0)
    assert limiter.acquire() == pytest.approx(2.1)


def test_invalid_qps() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_backoff_is_bounded_jittered_and_respects_retry_after() -> None:
    import random

    policy = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=4.0, rng=random.Random(0))
    delays = [policy.delay(attempt) for attempt in range(1, 8) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # jittered, not lockstep
    assert policy.delay(1, retry_after_s=7.0) == 7.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("99999999") == 3600.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
