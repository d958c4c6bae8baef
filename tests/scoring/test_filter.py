from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox import cli
from megatron_detox.errors import UserError
from megatron_detox.scoring.filter import describe, filter_file, keep_count, select_lowest

from .conftest import read_jsonl, write_jsonl


def test_keep_count_is_exact() -> None:
    assert keep_count(11, 0.5) == 5
    assert keep_count(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert keep_count(0, 0.5) == 0 and keep_count(7, 1.0) == 7


def test_select_lowest_breaks_ties_by_input_order() -> None:
    values = [0.3, 0.1, 0.3, 0.2, 0.3, 0.9]
    assert select_lowest(values, 0.5) == [0, 1, 3]  # 0.1, 0.2, then the first 0.3 (index 0)
    assert select_lowest(values, 0.7) == [0, 1, 2, 3]


def test_filter_keeps_lowest_half_of_scored(tmp_path: Path) -> None:
    scores = [0.5, 0.05, 0.9, 0.5, 0.3, 0.5, 0.7, 0.01, 0.5, 0.2, 0.8]
    records = [{"id": i, "scores": {"toxicity": s}} for i, s in enumerate(scores)]
    records.insert(3, {"id": "err", "score_error": "gave up after 6 attempts: HTTP 503"})
    records.insert(6, {"id": "other", "scores": {"profanity": 0.0}})
    source = write_jsonl(tmp_path / "scored.jsonl", records)
    stats = filter_file(source, tmp_path / "kept.jsonl", 0.5)

    kept = read_jsonl(tmp_path / "kept.jsonl")
    # floor(11 / 2) = 5 lowest: 0.01 (7), 0.05 (1), 0.2 (9), 0.3 (4), then the first 0.5 (0); input order kept.
    assert [r["id"] for r in kept] == [0, 1, 4, 7, 9]
    assert stats["num_records"] == 13 and stats["num_scored"] == 11 and stats["num_kept"] == 5
    assert stats["num_unscored"] == 2
    assert stats["num_unscored_by_reason"] == {"missing_attribute": 1, "score_error": 1}
    assert stats["threshold"] == 0.5 and stats["num_dropped"] == 6
    assert stats["after"]["max"] == 0.5 and stats["before"]["count"] == 11
    assert json.loads((tmp_path / "filter_stats.json").read_text()) == stats


def test_filter_errors(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "s.jsonl", [{"scores": {"toxicity_x": 0.1}}])
    with pytest.raises(UserError, match="no record has scores.toxicity: pass --attribute with one of toxicity_x"):
        filter_file(source, tmp_path / "k.jsonl")
    with pytest.raises(UserError, match="keep-fraction"):
        filter_file(source, tmp_path / "k.jsonl", keep_fraction=0)
    with pytest.raises(UserError, match="must differ"):
        filter_file(source, source)


def test_describe_percentiles() -> None:
    stats = describe([float(v) for v in range(101)])
    assert stats["mean"] == 50 and stats["p50"] == 50 and stats["p99"] == 99 and stats["p1"] == 1
    assert describe([])["count"] == 0


def test_cli_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "s.jsonl", [{"scores": {"profanity": v / 10}} for v in range(10)])
    code = cli.main(
        [
            "filter",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "k.jsonl"),
            "--keep-fraction",
            "0.3",
            "--attribute",
            "profanity",
            "--stats",
            str(tmp_path / "st.json"),
        ]
    )
    assert code == 0 and "kept 3/10" in capsys.readouterr().err
    assert [r["scores"]["profanity"] for r in read_jsonl(tmp_path / "k.jsonl")] == [0.0, 0.1, 0.2]
