"""A local Perspective-compatible HTTP server backed by an offline scorer.

Speaks ``POST /v1alpha1/comments:analyze`` with Perspective's JSON (see
``protocol``), so the production client path runs offline, and injects faults
(``FaultConfig``) for tests. Every request is logged as one JSONL line with its
arrival time (``t``, Unix seconds), status, fault and text hash; the log never
holds a key, a header or a text. Binds to loopback unless told otherwise.

In-process use::

    with serve_in_thread(CalibratedScorer(), port=0, log_path=log) as running:
        client = PerspectiveScorer(None, url=running.url)
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from megatron_detox.scoring import protocol
from megatron_detox.scoring.base import Closing, Scorer
from megatron_detox.scoring.faults import FaultConfig, FaultDecision, FaultInjector
from megatron_detox.scoring.text import encode_utf8, text_sha256

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20


@dataclass
class ServerSettings:
    """Behaviour of the local server besides faults."""

    max_text_bytes: int = protocol.DOCUMENTED_MAX_BYTES  # "Comment text too long." above
    languages: tuple[str, ...] = ("en",)  # others -> 400, like an unsupported language
    # Attributes the backend has are its own scores (``calibrated``: all eight).
    # "substitute": attributes the backend lacks are answered with its toxicity
    # score (so the paper's six attributes work with ``profanity``); "reject": 400.
    missing_attributes: str = "substitute"
    faults: FaultConfig = field(default_factory=FaultConfig)
    # When set, requests must carry this key (X-Goog-Api-Key header or ?key=),
    # else 400 "API key not valid", as Google answers. Never logged.
    api_key: str | None = field(default=None, repr=False)


class PerspectiveHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` holding the scorer, fault injector and request log."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        scorer: Scorer,
        settings: ServerSettings,
        log_path: str | Path | None,
    ) -> None:
        # Set before binding: a failed bind calls server_close(), which needs them.
        self._log_lock = threading.Lock()
        self._log: IO[str] | None = None
        super().__init__(address, PerspectiveHandler)
        self.scorer = scorer
        self.settings = settings
        self.injector = FaultInjector(settings.faults)
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log = Path(log_path).open("a", encoding="utf-8")
        self.num_requests = 0

    def record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self.num_requests += 1
            if self._log is not None:
                self._log.write(json.dumps(entry, sort_keys=True) + "\n")
                self._log.flush()

    def server_close(self) -> None:
        super().server_close()
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None


class PerspectiveHandler(BaseHTTPRequestHandler):
    """One request: fault decision, validation, scoring, JSON answer, log line."""

    protocol_version = "HTTP/1.1"  # keep-alive, so the client's pool is exercised
    server: PerspectiveHTTPServer

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self._entry: dict[str, Any] | None = {"t": time.time(), "path": self.path.split("?", 1)[0]}
        try:
            self._handle(self._entry)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (timeout); the entry is already logged
        finally:
            self._log(None, "client-gone")

    def _log(self, status: int | None, fault: str) -> None:
        """Write this request's log line once, *before* the client can see the answer,
        so a test reading the log right after its call finds every request."""
        entry, self._entry = self._entry, None
        if entry is not None:
            entry.update(status=status, fault=fault, done=time.time())
            self.server.record(entry)

    def do_GET(self) -> None:  # noqa: N802
        self._entry = None
        self._send_error(405, "Use POST " + protocol.API_PATH)

    def _handle(self, entry: dict[str, Any]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._send_error(413, "Request payload too large.")
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0] != protocol.API_PATH:
            return self._send_error(404, f"No such method: {self.path.split('?', 1)[0]}")
        if not self._key_ok():
            return self._send_error(400, "API key not valid. Please pass a valid API key.", fault="bad-key")
        decision = self.server.injector.decide()
        entry["delay_s"] = decision.delay_s
        if decision.delay_s:
            time.sleep(decision.delay_s)
        if decision.action == "drop":
            self._log(None, "drop")
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if decision.action == "429":
            retry_after = self.server.settings.faults.retry_after_s
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            message = "Quota exceeded for quota metric 'Analysis requests'."
            return self._send_error(429, message, headers, fault="429")
        if decision.action == "5xx":
            return self._send_error(decision.status, "Internal error encountered.", fault="5xx")
        return self._analyze(body, entry, decision)

    def _key_ok(self) -> bool:
        expected = self.server.settings.api_key
        if expected is None:
            return True
        query = parse_qs(urlsplit(self.path).query)
        given = self.headers.get("X-Goog-Api-Key") or (query.get("key") or [""])[0]
        return hmac.compare_digest(given.encode(), expected.encode())

    def _analyze(self, body: bytes, entry: dict[str, Any], decision: FaultDecision) -> None:
        settings = self.server.settings
        try:
            request = json.loads(body)
            text = request["comment"]["text"]
            requested = [str(name).lower() for name in request["requestedAttributes"]]
            languages = [str(lang) for lang in request.get("languages") or settings.languages]
        except (ValueError, KeyError, TypeError):
            return self._send_error(400, "Invalid JSON payload received.")
        if not isinstance(text, str):
            return self._send_error(400, "comment.text must be a string.")
        entry["text_sha256"] = text_sha256(text)
        entry["text_bytes"] = len(encode_utf8(text))
        if not text.strip():
            return self._send_error(400, "Comment must be non-empty.")
        if entry["text_bytes"] > settings.max_text_bytes:
            return self._send_error(400, protocol.TOO_LONG_MESSAGE)
        unsupported = [lang for lang in languages if lang not in settings.languages]
        if unsupported:
            return self._send_error(
                400,
                f"Attribute {requested[0].upper() if requested else 'TOXICITY'} does not support "
                f"request languages: {','.join(unsupported)}",
            )
        if not requested:
            return self._send_error(400, "No requested attributes.")
        backend = self.server.scorer
        missing = [name for name in requested if name not in backend.attributes]
        if missing and (settings.missing_attributes == "reject" or "toxicity" not in backend.attributes):
            return self._send_error(400, f"Requested attribute {missing[0].upper()} is not supported.")
        outcome = backend.score_detailed([text])[0]
        if outcome.scores is None:
            return self._send_error(400, outcome.error or "Could not score the comment.")
        scores = {name: outcome.scores.get(name, outcome.scores.get("toxicity", 0.0)) for name in requested}
        if decision.action == "malformed":
            return self._send_json(200, b'{"attributeScores": {"TOXICITY": {"summaryScore": ', fault="malformed")
        payload = protocol.build_response(scores, len(text), languages)
        return self._send_json(200, json.dumps(payload).encode())

    def _send_error(self, code: int, message: str, headers: dict[str, str] | None = None, fault: str = "ok") -> None:
        self._send_json(code, json.dumps(protocol.build_error(code, message)).encode(), headers, fault)

    def _send_json(self, code: int, data: bytes, headers: dict[str, str] | None = None, fault: str = "ok") -> None:
        self._log(code, fault)
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The stdlib would print the request line, which may carry ?key=...; the
        # JSONL log is the record, this goes to debug logging without the query.
        log.debug("%s %s", self.address_string(), (format % args).split("?", 1)[0])


def build_server(
    scorer: Scorer,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
    log_path: str | Path | None = None,
) -> tuple[PerspectiveHTTPServer, int]:
    """A bound, not yet serving server and its port (``port=0`` picks a free one)."""
    server = PerspectiveHTTPServer((host, port), scorer, settings or ServerSettings(), log_path)
    return server, int(server.server_address[1])


@dataclass
class RunningServer(Closing):
    """A server serving on a background thread; ``close()`` (or ``with``) shuts it down."""

    server: PerspectiveHTTPServer
    port: int
    thread: threading.Thread

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        return f"http://{host}:{self.port}{protocol.API_PATH}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def serve_in_thread(
    scorer: Scorer,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
    log_path: str | Path | None = None,
) -> RunningServer:
    """Start ``build_server(...)`` on a daemon thread and return it running."""
    server, bound = build_server(scorer, host, port, settings, log_path)
    # A short poll interval keeps stop() fast; serving itself does not poll.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="perspective-server", daemon=True
    )
    thread.start()
    return RunningServer(server, bound, thread)


def read_request_log(path: str | Path) -> list[dict[str, Any]]:
    """The server's JSONL request log as dicts, in write order."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
