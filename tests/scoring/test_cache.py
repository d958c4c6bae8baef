from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.scoring.base import ScoreOutcome
from megatron_detox.scoring.cache import ScoreCache, attributes_key


def test_roundtrip_persistence_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    attrs = attributes_key(["Toxicity", "profanity"])
    assert attrs == "profanity,toxicity"
    with ScoreCache(path) as cache:
        stored = cache.put_many(
            "s@1",
            attrs,
            [
                ("a", ScoreOutcome.success({"toxicity": 0.5}, truncated_bytes=3000)),
                ("b", ScoreOutcome.failure("HTTP 400: unsupported language", retryable=False)),
                ("c", ScoreOutcome.failure("gave up", retryable=True)),
            ],
        )
        assert stored == 2  # retryable errors are never cached
    with ScoreCache(path) as cache:
        assert cache.get("s@1", attrs, "a") == ScoreOutcome.success({"toxicity": 0.5}, 3000)
        assert cache.get("s@1", attrs, "b") == ScoreOutcome.failure("HTTP 400: unsupported language", retryable=False)
        assert cache.get("s@1", attrs, "c") is None
        assert cache.get("s@2", attrs, "a") is None  # other scorer
        assert cache.get("s@1", "toxicity", "a") is None  # other attribute set
        assert cache.forget_errors("s@1") == 1
        assert cache.get("s@1", attrs, "b") is None
        assert cache.count() == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_memory_cache() -> None:
    with ScoreCache(None) as cache:
        cache.put_many("s", "t", [("x", ScoreOutcome.success({"t": 0.1}))])
        assert cache.get("s", "t", "x") is not None


def test_corrupt_cache_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cache"):
        ScoreCache(path)
