"""A full disk is recognized in every form it takes, reported in one line, and undone."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from megatron_detox.atomic import write_text_atomic
from megatron_detox.diskfull import DiskFull, disk_full_errno, on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.generate.writer import ShardWriter
from megatron_detox.scoring.base import ScoreOutcome
from megatron_detox.scoring.cache import ScoreCache


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Failures(BaseException):
    """Shaped like DCP's CheckpointException: per-rank (exception, traceback) pairs."""

    def __init__(self, failures: dict[int, object]) -> None:
        super().__init__("CheckpointException")
        self.failures = failures


def test_every_form_of_a_full_disk_is_recognized() -> None:
    assert disk_full_errno(_enospc()) == errno.ENOSPC
    assert disk_full_errno(OSError(errno.EDQUOT, "quota")) == errno.EDQUOT
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert disk_full_errno(full) == errno.ENOSPC
    # safetensors: the OS message inside its own error type
    assert disk_full_errno(RuntimeError('IoError(Os { code: 28, message: "No space left on device" })')) == 28
    assert disk_full_errno(_Failures({1: (RuntimeError("x"), []), 0: (_enospc(), [])})) == errno.ENOSPC
    try:
        try:
            raise _enospc()
        except OSError as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as chained:
        assert disk_full_errno(chained) == errno.ENOSPC
    assert disk_full_errno(OSError(errno.EACCES, "denied")) is None
    # torch's errno-less writer error counts only where a probe write fails too
    assert disk_full_errno(RuntimeError("unexpected pos 704 vs 598"), probe=Path(".")) is None


def test_on_disk_full_removes_the_temp_files_and_names_path_and_free_space(tmp_path: Path) -> None:
    partial = tmp_path / "step_000004.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    with pytest.raises(DiskFull) as raised, on_disk_full(partial, cleanup=[partial]):
        raise _enospc()
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert message.startswith(f"{partial}: no space left on device (") and " free on " in message
    assert not partial.exists()
    with pytest.raises(ValueError), on_disk_full(tmp_path, cleanup=[tmp_path / "keep"]):
        raise ValueError("not a full disk: untouched")


def test_an_atomic_write_on_a_full_disk_keeps_the_old_content(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "latest"
    write_text_atomic(target, "step_000002\n")

    def full(fd: int) -> None:
        raise _enospc()

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match=f"^{target}: no space left on device"):
        write_text_atomic(target, "step_000004\n")
    assert target.read_text() == "step_000002\n" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_a_shard_append_on_a_full_disk_leaves_only_complete_records(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shard = tmp_path / "rank0.jsonl"
    writer = ShardWriter(shard)
    writer.append([{"id": 0, "text": "a"}, {"id": 1, "text": "b"}])
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:  # the disk fills in the middle of a batch
        if len(data) > 10:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise _enospc()

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFull, match="rank0.jsonl: no space left on device"):
        writer.append([{"id": 2, "text": "c" * 40}, {"id": 3, "text": "d"}])
    monkeypatch.setattr(os, "write", real_write)
    assert shard.read_text().splitlines() == ['{"id": 0, "text": "a"}', '{"id": 1, "text": "b"}']
    writer.append([{"id": 2, "text": "c"}])  # space again: the run continues where it stopped
    writer.close()
    assert shard.read_bytes().count(b"\n") == 3


def test_a_full_score_cache_keeps_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    with ScoreCache(path) as cache:
        cache.put_many("ns", "toxicity", [("a" * 64, ScoreOutcome.success({"toxicity": 0.1}))])
        page_count = cache._db.execute("PRAGMA page_count").fetchone()[0]
        cache._db.execute(f"PRAGMA max_page_count = {page_count}")  # SQLite's own full-disk condition
        with pytest.raises(DiskFull, match="cache.sqlite: no space left on device"):
            cache.put_many("ns", "toxicity", [(f"{i:064d}", ScoreOutcome.success({"toxicity": 0.5}))
                                              for i in range(2000)])
        assert cache.count() == 1 and cache.get("ns", "toxicity", "a" * 64) is not None
