"""The fixed split of the archived Perspective data (needs the shared data folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.jsonl import iter_jsonl
from megatron_detox.scoring.calibrated import data


@pytest.fixture(scope="module")
def dataset(shared_data: Path) -> data.Dataset:
    return data.load_dataset(shared_data)


def test_every_source_and_split_present_texts_unique(dataset: data.Dataset) -> None:
    assert {(r.source, r.split) for r in dataset.rows} == {(s, p) for s in data.SOURCES for p in data.SPLITS}
    keys = [r.text.strip() for r in dataset.rows]
    assert len(keys) == len(set(keys)) > 50_000
    assert all(r.scores and all(0.0 <= v <= 1.0 for v in r.scores.values()) for r in dataset.rows)
    assert all(r.scores.keys() == set(data.ATTRIBUTES) for r in dataset.rows if r.source == "rtp" and len(r.scores) > 1
               and r.role == "continuation" and r.reserved)


def test_evaluation_prompts_and_continuations_never_trained_on(dataset: data.Dataset, shared_data: Path) -> None:
    reserved: set[str] = set()
    for path in sorted(shared_data.glob(data.RESERVED_GLOB)):
        for _, record in iter_jsonl(path):
            reserved.add(record["prompt"]["text"].strip())
            reserved.add(record["continuation"]["text"].strip())
    assert len(reserved) > 4000
    trained = {r.text.strip() for r in dataset.rows if r.split != "test"}
    assert not reserved & trained
    assert len(reserved & {r.text.strip() for r in dataset.rows if r.split == "test"}) > 4000


def test_prompt_and_continuation_share_a_split(dataset: data.Dataset) -> None:
    by_text = {r.text.strip(): r for r in dataset.rows}
    for record in dataset.rtp_records:
        prompt, continuation = by_text.get(record.prompt), by_text.get(record.continuation)
        if prompt is not None and continuation is not None:
            assert prompt.split == continuation.split == "test"
    groups: dict[str, set[str]] = {}
    for row in dataset.rows:
        if row.source == "rtp":
            groups.setdefault(row.group, set()).add(row.split)
    # a group straddles only where one of its texts also sits in a held-out group elsewhere
    straddling = [g for g, splits in groups.items() if "train" in splits and len(splits) > 1]
    assert len(straddling) < 0.001 * len(groups)


def test_split_is_a_fixed_hash() -> None:
    assert [data.split_of(f"rtp:{i}") for i in range(5)] == [data.split_of(f"rtp:{i}") for i in range(5)]
    shares = [data.split_of(f"g{i}") for i in range(20_000)]
    assert abs(shares.count("test") / 20_000 - data.TEST_PERCENT / 100) < 0.01


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="perspective_scored"):
        data.load_dataset(tmp_path)
