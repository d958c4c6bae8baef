"""The production client against the real local server on loopback."""

from __future__ import annotations

import logging
import time

import pytest

from megatron_detox.errors import UserError
from megatron_detox.scoring.apikey import ApiKey
from megatron_detox.scoring.base import DEFAULT_ATTRIBUTES
from megatron_detox.scoring.faults import FaultConfig
from megatron_detox.scoring.perspective import PerspectiveScorer
from megatron_detox.scoring.retry import RetryPolicy
from megatron_detox.scoring.server import read_request_log

from .conftest import StartServer

KEY = "AIzaSy-perspective-test-KEY-42"


def client(url: str, *, attempts: int = 4, timeout_s: float = 2.0, **options: object) -> PerspectiveScorer:
    return PerspectiveScorer(
        ApiKey(KEY),
        url=url,
        qps=50,
        timeout_s=timeout_s,
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, max_delay_s=0.05),
        **options,  # type: ignore[arg-type]
    )


def test_scores_all_attributes_like_the_offline_model(start_server: StartServer, profanity) -> None:
    server = start_server(api_key=KEY)
    with client(server.url) as scorer:
        results = scorer.score(["you are a stupid idiot", "what a lovely morning"])
    expected = profanity.score(["you are a stupid idiot", "what a lovely morning"])
    for got, want in zip(results, expected):
        assert got is not None and set(got) == set(DEFAULT_ATTRIBUTES)
        assert got["toxicity"] == pytest.approx(want["toxicity"])  # type: ignore[index]
    assert results[0]["toxicity"] > 0.9 > 0.2 > results[1]["toxicity"]  # type: ignore[index]


def test_bad_key_stops_the_run_without_leaking(start_server: StartServer) -> None:
    server = start_server(api_key="the-right-key")
    with client(server.url) as scorer, pytest.raises(UserError) as error:
        scorer.score(["hello"])
    assert "API key not valid" in str(error.value) and KEY not in str(error.value)
    assert KEY not in repr(scorer)


def test_too_long_retries_once_at_documented_limit(start_server: StartServer) -> None:
    server = start_server()  # answers "Comment text too long." above 3000 bytes
    text = "ça va " * 1000  # 7000 bytes
    with client(server.url) as scorer:
        outcome = scorer.score_one(text)
    assert outcome.ok and outcome.truncated_bytes is not None and 2995 <= outcome.truncated_bytes <= 3000
    sizes = [entry["text_bytes"] for entry in read_request_log(server.log_path)]  # type: ignore[attr-defined]
    assert sizes == [7000, outcome.truncated_bytes]


def test_two_megabyte_text(start_server: StartServer) -> None:
    server = start_server()
    with client(server.url) as scorer:
        outcome = scorer.score_one("é" * 1_000_000)
    assert outcome.ok and outcome.truncated_bytes == 3000
    sizes = [entry["text_bytes"] for entry in read_request_log(server.log_path)]  # type: ignore[attr-defined]
    assert sizes == [20480, 3000]  # the paper's 20 KiB cut first, then the documented limit


def test_unsupported_language_is_recorded_not_retried(start_server: StartServer) -> None:
    server = start_server()
    with client(server.url, languages=("xx",)) as scorer:
        outcome = scorer.score_one("bonjour")
    assert not outcome.ok and not outcome.retryable
    assert "HTTP 400" in outcome.error and "does not support request languages" in outcome.error  # type: ignore[operator]
    assert len(read_request_log(server.log_path)) == 1  # type: ignore[attr-defined]


def test_empty_text_is_never_sent(start_server: StartServer) -> None:
    server = start_server()
    with client(server.url) as scorer:
        outcomes = scorer.score_detailed(["", "  \n"])
    assert all(not o.ok and not o.retryable and "empty" in (o.error or "") for o in outcomes)
    assert server.server.num_requests == 0


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (FaultConfig(p_malformed=1.0), "malformed Perspective response"),
        (FaultConfig(p_5xx=1.0), "HTTP 50"),
        (FaultConfig(p_drop=1.0), "connection error"),
    ],
)
def test_persistent_faults_end_as_retryable_errors(start_server: StartServer, faults: FaultConfig, reason: str) -> None:
    server = start_server(faults=faults)
    with client(server.url, attempts=3) as scorer:
        outcome = scorer.score_one("hello there")
    assert not outcome.ok and outcome.retryable and outcome.scores is None
    assert "gave up after 3 attempts" in outcome.error and reason in outcome.error  # type: ignore[operator]
    assert len(read_request_log(server.log_path)) == 3  # type: ignore[attr-defined]


def test_timeouts_are_retried(start_server: StartServer) -> None:
    server = start_server(faults=FaultConfig(delay_s=0.4))
    with client(server.url, attempts=2, timeout_s=0.1) as scorer:
        outcome = scorer.score_one("hello there")
    assert outcome.retryable and "timeout" in outcome.error  # type: ignore[operator]


def test_retry_after_is_honoured(start_server: StartServer) -> None:
    server = start_server(faults=FaultConfig(p_429=1.0, retry_after_s=0.2))
    started = time.monotonic()
    with client(server.url, attempts=3) as scorer:
        outcome = scorer.score_one("hello there")
    assert outcome.retryable and "HTTP 429" in outcome.error  # type: ignore[operator]
    assert time.monotonic() - started >= 0.4
    arrivals = [entry["t"] for entry in read_request_log(server.log_path)]  # type: ignore[attr-defined]
    assert all(b - a >= 0.19 for a, b in zip(arrivals, arrivals[1:]))


def test_429_burst_then_success(start_server: StartServer) -> None:
    server = start_server(faults=FaultConfig(p_429=1.0, burst_429=3, seed=1))
    # The first draw starts a 3-request burst; p_429=1 would restart it, so stop after it.
    server.server.injector.config = FaultConfig(burst_429=3)  # type: ignore[misc]
    server.server.injector._burst_left = 3
    with client(server.url, attempts=5) as scorer:
        outcome = scorer.score_one("hello there")
    assert outcome.ok
    statuses = [entry["status"] for entry in read_request_log(server.log_path)]  # type: ignore[attr-defined]
    assert statuses == [429, 429, 429, 200]


def test_key_in_url_is_scrubbed_from_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Port 9 on loopback: nothing listens, so requests raises with the URL in its message.
    url = f"http://127.0.0.1:9/v1alpha1/comments:analyze?key={KEY}"
    scorer = PerspectiveScorer(
        None, url=url, qps=100, retry=RetryPolicy(max_attempts=2, base_delay_s=0.0), timeout_s=0.5
    )
    outcome = scorer.score_one("hello")
    assert outcome.retryable and KEY not in (outcome.error or "")
    assert KEY not in repr(scorer) and KEY not in scorer.cache_namespace
    assert KEY not in caplog.text


def test_key_travels_in_header_not_url(start_server: StartServer) -> None:
    server = start_server(api_key=KEY)
    with client(server.url) as scorer:
        assert scorer.score_one("hi there").ok
    log_text = server.log_path.read_text()  # type: ignore[attr-defined]
    assert KEY not in log_text and "?" not in log_text
