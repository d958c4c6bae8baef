"""``eval toxicity --from-scored``: scored records + prompts -> metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.evaluate.prompts import load_rtp_prompts
from megatron_detox.evaluate.toxicity_eval import METRICS_FILE, PER_PROMPT_FILE, metrics_from_scored


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": {"text": "p0", "toxicity": 0.9}},
        {"prompt": {"text": "p1", "toxicity": 0.5}},
        {"prompt": {"text": "p2", "toxicity": 0.1}},
    ])


def _record(prompt: int, sample: int, toxicity: float | None, error: bool = False) -> dict:
    record: dict = {"prompt_index": prompt, "sample_index": sample, "text": "x", "scorer": {"name": "profanity"}}
    if error:
        record["score_error"] = "quota"
    else:
        record["scores"] = {"toxicity": toxicity, "profanity": 0.0}
    return record


def test_from_scored_writes_metrics(tmp_path: Path, prompts_file: Path) -> None:
    scored = _jsonl(tmp_path / "scored.jsonl", [
        _record(0, 0, 0.2), _record(0, 1, 0.7),
        _record(1, 0, 0.5), _record(1, 1, None, error=True),
        _record(2, 0, None), _record(2, 1, 0.1),
    ])
    out = tmp_path / "out"
    metrics = metrics_from_scored(scored, load_rtp_prompts(prompts_file), out, num_bootstrap=100, seed=1)
    on_disk = json.loads((out / METRICS_FILE).read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["scorer"] == "profanity"
    assert metrics["all"]["expected_max_toxicity"] == pytest.approx((0.7 + 0.5 + 0.1) / 3)
    assert metrics["all"]["toxicity_probability"] == pytest.approx(2 / 3)
    assert metrics["toxic"]["expected_max_toxicity"] == pytest.approx(0.6)
    assert metrics["nontoxic"]["toxicity_probability"] == 0.0
    assert metrics["num_unscored"] == 2 and metrics["num_unscored_prompts"] == 0
    for group in ("all", "toxic", "nontoxic"):
        assert set(metrics[group]) >= {"expected_max_toxicity", "expected_max_toxicity_ci", "toxicity_probability",
                                       "toxicity_probability_ci", "num_prompts"}
    rows = [json.loads(line) for line in (out / PER_PROMPT_FILE).read_text().splitlines()]
    assert [r["max_toxicity"] for r in rows] == [0.7, 0.5, 0.1]
    assert [r["num_scored"] for r in rows] == [2, 1, 1]


def test_prompt_without_any_record_is_counted_not_zero(tmp_path: Path, prompts_file: Path) -> None:
    scored = _jsonl(tmp_path / "scored.jsonl", [_record(0, 0, 0.9), _record(2, 0, 0.3)])
    metrics = metrics_from_scored(scored, load_rtp_prompts(prompts_file), tmp_path, num_bootstrap=0)
    assert metrics["all"]["num_prompts"] == 2
    assert metrics["all"]["expected_max_toxicity"] == pytest.approx(0.6)
    assert metrics["num_unscored_prompts"] == 1 and metrics["num_prompts_missing_samples"] == 1


@pytest.mark.parametrize(("record", "message"), [
    ({"sample_index": 0, "scores": {"toxicity": 0.1}}, r"scored.jsonl:1: field 'prompt_index'"),
    ({"prompt_index": 3, "scores": {"toxicity": 0.1}}, r"scored.jsonl:1: prompt_index=3 is outside"),
    ({"prompt_index": 0, "scores": {"toxicity": 1.5}}, r"scored.jsonl:1: field 'scores.toxicity'=1.5"),
])
def test_bad_scored_records(tmp_path: Path, prompts_file: Path, record: dict, message: str) -> None:
    scored = _jsonl(tmp_path / "scored.jsonl", [record])
    with pytest.raises(UserError, match=message):
        metrics_from_scored(scored, load_rtp_prompts(prompts_file), tmp_path / "out")


def test_duplicate_sample_is_refused(tmp_path: Path, prompts_file: Path) -> None:
    scored = _jsonl(tmp_path / "scored.jsonl", [_record(0, 0, 0.1), _record(0, 0, 0.9)])
    with pytest.raises(UserError, match=r"scored.jsonl:2: duplicate record for prompt_index=0, sample_index=0"):
        metrics_from_scored(scored, load_rtp_prompts(prompts_file), tmp_path / "out")
