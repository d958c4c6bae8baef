"""Production Perspective API client on a pooled ``requests`` session.

One ``comments:analyze`` request per text (the API has no batch call). Every
attempt, retries included, takes a slot from one shared ``RateLimiter`` so the
quota (default 1 QPS) is used fully and never exceeded, however many workers
call ``score_detailed`` at once. Failure handling per text:

* 429 / 5xx / timeout / connection error / malformed 200 body: back off
  (exponential, jittered, at least Retry-After, which also pauses every worker)
  and retry, up to ``RetryPolicy.max_attempts``; then a *retryable* error.
* 400 "Comment text too long": retry once cut to the documented 3000 bytes.
* other 400 (e.g. unsupported language): a non-retryable error with the reason.
* bad key (401/403, "API key not valid"), 404 endpoint: ``UserError`` for the run.

The key is sent as the ``X-Goog-Api-Key`` header and scrubbed from every message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from megatron_detox.errors import UserError
from megatron_detox.scoring import protocol
from megatron_detox.scoring.apikey import ApiKey, Redactor
from megatron_detox.scoring.base import DEFAULT_ATTRIBUTES, EMPTY_TEXT_ERROR, ScoreOutcome, Scorer
from megatron_detox.scoring.ratelimit import RateLimiter
from megatron_detox.scoring.retry import RetryPolicy, parse_retry_after
from megatron_detox.scoring.text import encode_utf8, truncate_utf8

log = logging.getLogger(__name__)


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def strip_query(url: str) -> str:
    """The URL without query or fragment (where a ``?key=`` would live)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class PerspectiveScorer(Scorer):
    """Scores texts with the Perspective API (or any endpoint speaking its JSON)."""

    name = "perspective"
    batch_size = 1

    def __init__(
        self,
        api_key: ApiKey | None,
        *,
        url: str = protocol.DEFAULT_URL,
        attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
        languages: Sequence[str] = ("en",),
        qps: float = 1.0,
        max_bytes: int = protocol.DEFAULT_MAX_BYTES,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        pool_size: int = 16,
    ) -> None:
        if not attributes:
            raise UserError("Perspective needs at least one attribute: check --attributes")
        if max_bytes < 1:
            raise UserError(f"--max-bytes must be >= 1, got {max_bytes}")
        self._key = api_key
        self._redact = Redactor(api_key)
        self.url = url
        self.attributes = tuple(a.lower() for a in attributes)
        self.languages = tuple(languages)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter or RateLimiter(qps)
        self.version = protocol.API_VERSION
        self._pool_size = pool_size
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------
    @property
    def cache_namespace(self) -> str:
        languages = ",".join(self.languages) or "auto"
        endpoint = self._redact(strip_query(self.url))
        return f"perspective@{self.version}|{endpoint}|lang={languages}|max_bytes={self.max_bytes}"

    def __repr__(self) -> str:
        return (
            f"PerspectiveScorer(url={self._redact(strip_query(self.url))!r}, "
            f"attributes={self.attributes!r}, qps={self.rate_limiter.qps}, key={self._key!r})"
        )

    # -- transport --------------------------------------------------------------------
    def _session(self) -> requests.Session:
        # One session per worker thread (requests does not promise thread safety),
        # each with a keep-alive pool; transport retries are ours, not urllib3's.
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["Content-Type"] = "application/json"
            if self._key is not None:
                session.headers["X-Goog-Api-Key"] = self._key.reveal()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()

    # -- scoring ----------------------------------------------------------------------
    def score_detailed(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        return [self.score_one(text) for text in texts]

    def score_one(self, text: str) -> ScoreOutcome:
        """Score one text with retries; never raises for per-text failures."""
        if not text.strip():
            return ScoreOutcome.failure(EMPTY_TEXT_ERROR, retryable=False)
        sent, truncated = truncate_utf8(text, self.max_bytes)
        shortened = False
        attempt = 0
        while True:
            attempt += 1
            try:
                scores = self._attempt(sent)
                return ScoreOutcome.success(scores, truncated_bytes=truncated)
            except _Retry as failure:
                reason, retry_after = failure.reason, failure.retry_after_s
            except _TooLong as too_long:
                if shortened or len(encode_utf8(sent)) <= protocol.DOCUMENTED_MAX_BYTES:
                    return ScoreOutcome.failure(f"HTTP 400: {too_long}", retryable=False)
                sent, truncated = truncate_utf8(sent, protocol.DOCUMENTED_MAX_BYTES)
                shortened = True
                attempt -= 1  # the documented-limit retry is not a fault
                continue
            except _Rejected as rejected:
                return ScoreOutcome.failure(str(rejected), retryable=False)
            if attempt >= self.retry.max_attempts:
                return ScoreOutcome.failure(f"gave up after {attempt} attempts: {reason}", retryable=True)
            if retry_after:
                self.rate_limiter.pause(retry_after)
            delay = self.retry.delay(attempt, retry_after)
            log.debug("perspective attempt %d failed (%s); retrying in %.2fs", attempt, reason, delay)
            time.sleep(delay)

    def _attempt(self, text: str) -> dict[str, float]:
        body = protocol.build_request(text, self.attributes, self.languages)
        self.rate_limiter.acquire()
        try:
            # No redirects: a redirect could carry the key header to another host.
            response = self._session().post(self.url, json=body, timeout=self.timeout_s, allow_redirects=False)
        except requests.Timeout as error:
            raise _Retry(f"timeout ({self._redact(type(error).__name__)})") from None
        except requests.RequestException as error:
            raise _Retry(f"connection error: {self._redact(str(error))[:300]}") from None
        status = response.status_code
        payload = response.content
        if status == 200:
            try:
                return protocol.parse_response(payload, self.attributes)
            except protocol.MalformedResponse as error:
                raise _Retry(self._redact(str(error))) from None
        error_status, message = protocol.parse_error(payload)
        message = self._redact(message)
        if status in (401, 403) or protocol.is_bad_key(error_status, message):
            raise UserError(
                f"{self._redact(strip_query(self.url))}: HTTP {status} {error_status}: {message[:200]}"
                " — check PERSPECTIVE_API_KEY / --api-key-file and that the API is enabled"
            )
        if status == 404 or 300 <= status < 400:
            raise UserError(
                f"{self._redact(strip_query(self.url))}: HTTP {status}: no Perspective endpoint here"
                " — check --perspective-url"
            )
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Retry(f"HTTP {status} {error_status}: {message[:200]}".rstrip(": "), retry_after)
        if status == 400 and protocol.is_too_long(message):
            raise _TooLong(message[:200])
        raise _Rejected(f"HTTP {status} {error_status}: {message[:300]}".rstrip(": "))


class _TooLong(Exception):
    """Internal: the API refused the text as too long."""


class _Rejected(Exception):
    """Internal: the API refused this text for good (a 4xx other than quota)."""
