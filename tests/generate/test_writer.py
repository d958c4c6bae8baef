"""Shards: torn last lines are repaired, finished ids are read from every shard, merge is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.generate.writer import ShardWriter, check_run_settings, finished_ids, merge_shards, shard_path


def record(i: int) -> dict:
    return {"id": i, "prompt_index": None, "sample_index": i, "prompt": "", "text": f"t{i}", "num_tokens": 1,
            "finish_reason": "length"}


def test_torn_line_is_dropped_and_ids_resume(tmp_path: Path) -> None:
    writer = ShardWriter(shard_path(tmp_path, 0))
    writer.append([record(0), record(2)])
    writer.close()
    with shard_path(tmp_path, 0).open("a") as handle:
        handle.write('{"id": 4, "text": "half')  # a kill in the middle of a write
    ShardWriter(shard_path(tmp_path, 1)).append([record(1)])
    assert finished_ids(tmp_path) == {0, 1, 2}  # the torn record does not count
    writer = ShardWriter(shard_path(tmp_path, 0))  # reopening truncates the torn line
    writer.append([record(4), record(3)])
    writer.close()
    merged = merge_shards(tmp_path, 5)
    lines = merged.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]


def test_merge_refuses_missing_ids(tmp_path: Path) -> None:
    ShardWriter(shard_path(tmp_path, 0)).append([record(0), record(2)])
    with pytest.raises(RuntimeError, match="1 ids have no record"):
        merge_shards(tmp_path, 3)
    assert not (tmp_path / "generations.jsonl").exists()


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    check_run_settings(tmp_path, {"seed": 1, "top_p": 0.9})
    check_run_settings(tmp_path, {"seed": 1, "top_p": 0.9})
    with pytest.raises(UserError, match="seed=1"):
        check_run_settings(tmp_path, {"seed": 2, "top_p": 0.9})


def test_damaged_middle_line_is_a_user_error(tmp_path: Path) -> None:
    path = shard_path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record(0)) + "\nnot json\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(UserError, match=r"rank0.jsonl:2: damaged record"):
        finished_ids(tmp_path)
