"""Exactly-once output: append-only per-rank shards, then one merged file.

Layout of an output folder::

    DIR/run.json               the generation settings; a rerun must match them
    DIR/shards/rank{r}.jsonl   records appended by rank r (flush + fsync per batch)
    DIR/metrics/rank{r}.jsonl  one JSON line of throughput per batch
    DIR/generations.jsonl      every id once, in id order (temp file + rename)
    DIR/manifest.json          settings, counts, tokens/s (temp file + rename)

A kill can only tear the last line of a shard (a batch is written then fsynced); the
writer truncates that line when it reopens the shard. Finished ids are read from
*all* shards, so a rerun with another number of ranks still skips them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from megatron_detox import atomic
from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError

Record = dict[str, Any]
RECORD_KEYS = ("id", "prompt_index", "sample_index", "prompt", "text", "num_tokens", "finish_reason")


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the settings of this run, or refuse to resume a run made with others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every rank writes identical content; the rename is atomic.
    atomic.check_run_settings(out_dir / "run.json", settings, "rerun with the same settings or use another --out")


def _read_lines(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number}: damaged record (not a torn last line); delete the "
                                f"shard to regenerate its samples") from None
    return records


class ShardWriter:
    """Append-only JSONL shard of one rank; reopening repairs a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):  # killed mid-write: drop the partial line
                with path.open("r+b") as handle:
                    handle.truncate(end)
                    os.fsync(handle.fileno())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, records: Iterable[Record]) -> None:
        """Append a batch durably; a batch that fails (full disk, signal) leaves no partial line."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        end = os.lseek(self._fd, 0, os.SEEK_END)
        written = 0
        with on_disk_full(self.path):
            try:
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                os.fsync(self._fd)
            except BaseException as error:
                # A partial batch, or one the disk may not hold (fsync failed): the shard again
                # ends after its last complete record. A signal after the write keeps the batch.
                if written < len(data) or isinstance(error, OSError):
                    os.ftruncate(self._fd, end)
                raise

    def close(self) -> None:
        os.close(self._fd)


def shard_path(out_dir: Path, rank: int) -> Path:
    return out_dir / "shards" / f"rank{rank}.jsonl"


def finished_ids(out_dir: Path) -> set[int]:
    """Ids with a complete record in any shard (a torn last line does not count)."""
    done: set[int] = set()
    for shard in sorted((out_dir / "shards").glob("rank*.jsonl")):
        data = shard.read_bytes()
        complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                done.add(int(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{shard}:{number}: damaged record; delete the shard to regenerate "
                                f"its samples") from None
    return done


def merge_shards(out_dir: Path, num_ids: int) -> Path:
    """Write ``generations.jsonl``: ids ``0..num_ids-1`` once each, in order."""
    by_id: dict[int, Record] = {}
    for shard in sorted((out_dir / "shards").glob("rank*.jsonl")):
        for record in _read_lines(shard):
            by_id.setdefault(int(record["id"]), record)  # a duplicate holds the same text
    missing = [i for i in range(num_ids) if i not in by_id]
    if missing:
        raise RuntimeError(f"{out_dir}: {len(missing)} ids have no record (first {missing[0]}); "
                           f"rerun the command to generate them")
    extra = sorted(set(by_id) - set(range(num_ids)))
    if extra:
        raise UserError(f"{out_dir}: holds id {extra[0]} beyond the {num_ids} requested; use a fresh --out")
    target = out_dir / "generations.jsonl"
    with atomic.atomic_output(target) as handle:  # a full disk: temp removed, one line, shards intact
        for i in range(num_ids):
            handle.write(json.dumps(by_id[i], ensure_ascii=False) + "\n")
    return target


def append_metrics(out_dir: Path, rank: int, metrics: Record) -> None:
    path = out_dir / "metrics" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with on_disk_full(path), path.open("a", encoding="utf-8") as handle:  # a torn line only loses one sample
        handle.write(json.dumps(metrics) + "\n")


def read_metrics(out_dir: Path) -> list[Record]:
    records: list[Record] = []
    for path in sorted((out_dir / "metrics").glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a metrics line torn by a kill only loses one throughput sample
    return records
