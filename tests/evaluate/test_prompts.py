"""RealToxicityPrompts prompt files: real data loads, bad input gives one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.evaluate.prompts import load_rtp_prompts


def test_real_decodingtrust_subsets(shared_data: Path) -> None:
    toxic = load_rtp_prompts(shared_data / "rtp/decodingtrust/toxic.jsonl")
    nontoxic = load_rtp_prompts(shared_data / "rtp/decodingtrust/nontoxic.jsonl")
    assert len(toxic) == 1196 and len(nontoxic) == 1200
    assert [p.index for p in toxic[:3]] == [0, 1, 2]
    assert all(p.toxicity is not None and p.toxicity < 0.5 for p in nontoxic)
    assert sum(bool(p.is_toxic) for p in toxic) == 993  # "challenging" prompts: 993 have toxicity >= 0.5


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_missing_text_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": {"text": "a", "toxicity": 0.1}}, {"prompt": {"toxicity": 0.2}}])
    with pytest.raises(UserError, match=r"p.jsonl:2: field 'prompt.text' is missing"):
        load_rtp_prompts(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(UserError, match="no prompts"):
        load_rtp_prompts(path)


def test_missing_toxicity_is_allowed_but_bad_values_are_not(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": {"text": "a"}}, {"prompt": {"text": "b", "toxicity": None}}])
    assert [p.toxicity for p in load_rtp_prompts(path)] == [None, None]
    _write(path, [{"prompt": {"text": "a", "toxicity": "high"}}])
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'prompt.toxicity'"):
        load_rtp_prompts(path)
    _write(path, ['{"prompt": {"text": "a"'])
    with pytest.raises(UserError, match=r"p.jsonl:1: malformed JSON"):
        load_rtp_prompts(path)
    with pytest.raises(UserError, match="not found"):
        load_rtp_prompts(tmp_path / "nope.jsonl")
