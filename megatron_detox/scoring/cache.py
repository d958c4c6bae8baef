"""SQLite score cache keyed by (scorer namespace, attributes, sha256 of text).

The cache doubles as the scoring journal: every finished batch is committed
(WAL mode, ``synchronous=FULL``) before the pipeline moves on, so a ``kill -9``
loses at most the batches in flight and a rerun never pays for a text twice.
Only final outcomes are stored: scores, and non-retryable errors (a 400 for
that text); retryable errors are left out so the next run tries again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.scoring.base import Closing, ScoreOutcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    scorer TEXT NOT NULL,
    attributes TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    scores TEXT,
    error TEXT,
    truncated_bytes INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (scorer, attributes, text_sha256)
) WITHOUT ROWID
"""


def attributes_key(attributes: Sequence[str]) -> str:
    """Canonical cache form of an attribute set: sorted, lower-case, comma-joined."""
    return ",".join(sorted(a.lower() for a in attributes))


class ScoreCache(Closing):
    """Thread-safe persistent map ``(namespace, attributes, sha256) -> ScoreOutcome``.

    ``path=None`` keeps the cache in memory (no persistence, same behaviour).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with on_disk_full(target):
                self._db = sqlite3.connect(target, timeout=60.0, check_same_thread=False)
                if self.path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute(_SCHEMA)
                self._db.commit()
        except sqlite3.DatabaseError as error:
            raise UserError(f"{target}: cannot open score cache ({error}): pass another --cache") from None
        self._lock = threading.Lock()

    def get(self, namespace: str, attributes: str, sha: str) -> ScoreOutcome | None:
        """The stored outcome or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT scores, error, truncated_bytes FROM scores "
                "WHERE scorer = ? AND attributes = ? AND text_sha256 = ?",
                (namespace, attributes, sha),
            ).fetchone()
        if row is None:
            return None
        scores, error, truncated = row
        if scores is not None:
            return ScoreOutcome.success(json.loads(scores), truncated_bytes=truncated)
        return ScoreOutcome.failure(error, retryable=False)

    def put_many(self, namespace: str, attributes: str, items: Iterable[tuple[str, ScoreOutcome]]) -> int:
        """Store final outcomes (retryable errors are skipped) in one durable commit."""
        rows = [
            (
                namespace,
                attributes,
                sha,
                json.dumps(outcome.scores, sort_keys=True) if outcome.scores is not None else None,
                outcome.error,
                outcome.truncated_bytes,
                time.time(),
            )
            for sha, outcome in items
            if outcome.ok or not outcome.retryable
        ]
        if not rows:
            return 0
        # A full disk rolls the batch back; every batch committed before stays (and is not sent again).
        with on_disk_full(self.path or ":memory:"), self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def count(self, namespace: str | None = None) -> int:
        with self._lock:
            if namespace is None:
                return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM scores WHERE scorer = ?", (namespace,)).fetchone()[0])

    def forget_errors(self, namespace: str) -> int:
        """Drop stored non-retryable errors so the next run asks again."""
        with self._lock, self._db:
            cursor = self._db.execute("DELETE FROM scores WHERE scorer = ? AND scores IS NULL", (namespace,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"ScoreCache({str(self.path) if self.path else ':memory:'})"
