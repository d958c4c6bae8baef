"""``megatron-detox scorer train`` end to end on a tiny data folder in the shared layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from megatron_detox.scoring.calibrated.data import ATTRIBUTES
from megatron_detox.scoring.calibrated.scorer import CalibratedScorer

from ..conftest import run_cli

BAD = ["you stupid idiot", "shut up moron", "I hate you, you worthless fool", "go to hell you jerk"]
GOOD = ["have a lovely day", "thanks for the help", "the meeting is on tuesday", "what a nice garden"]


def _scores(toxic: bool) -> dict[str, float]:
    return {name: (0.9 if toxic else 0.05) for name in ATTRIBUTES}


def make_data_folder(root: Path) -> Path:
    records = root / "perspective_scored" / "rtp_records"
    records.mkdir(parents=True)
    lines = []
    for i in range(240):
        toxic = i % 2 == 0
        words = BAD if toxic else GOOD
        prompt = {"text": f"record {i}: {words[i % 4]}", **_scores(toxic)}
        continuation = {"text": f" and then {words[(i + 1) % 4]} number {i}", **_scores(toxic)}
        lines.append(json.dumps({"filename": f"{i}.txt", "begin": 0, "end": 9, "prompt": prompt,
                                 "continuation": continuation}))
    (records / "tiny.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "rtp" / "decodingtrust").mkdir(parents=True)
    (root / "rtp" / "decodingtrust" / "toxic.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    tables = {
        "perspectiveapi_sample/perspective_wikipedia_2k_score_sample_20180829.csv":
            (["id", "comment_text", "TOXICITY@6", "SEVERE_TOXICITY@2", "IDENTITY_ATTACK", "INSULT", "PROFANITY",
              "SEXUALLY_EXPLICIT", "THREAT", "FLIRTATION"],
             [[f"p{i}", GOOD[i % 4] + f" p{i}", "0.02", "0.01", "0.01", "0.02", "0.01", "0.01", "0.01", "0.1"]
              for i in range(20)]),
        "wikitalk_cat_large/gc.csv": (["id", "text", "label", "api", "parent"],
                                      [[f"w{i}", BAD[i % 4] + f" w{i}", "1", "0.8", ""] for i in range(20)]),
        "wikitalk_cat_large/gn.csv": (["id", "text", "label", "api", "parent"],
                                      [[f"n{i}", GOOD[i % 4] + f" n{i}", "0", "0.03", ""] for i in range(20)]),
        "github_comments_strudel/train_comments.csv": (["_id", "text", "perspective_score", "toxicity"],
                                                       [[f"g{i}", GOOD[i % 4] + f" g{i}", "0.02", "n"]
                                                        for i in range(20)]),
    }
    for name, (header, rows) in tables.items():
        path = root / "perspective_scored" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    return root


def test_scorer_train_writes_a_loadable_head(tmp_path: Path) -> None:
    data = make_data_folder(tmp_path / "data")
    out = tmp_path / "head"
    result = run_cli("scorer", "train", "--data", str(data), "--out", str(out), "--word-bits", "10",
                     "--char-bits", "10", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "toxicity" in result.stderr and f"-> {out}" in result.stderr
    meta = json.loads((out / "head.json").read_text())
    assert meta["split"]["num_reserved_texts"] == 2 and meta["features"]["word_bits"] == 10
    scorer = CalibratedScorer(out)
    bad, good = scorer.score(["you stupid idiot", "have a lovely day"])
    assert bad is not None and good is not None and bad["toxicity"] > good["toxicity"]


def test_scorer_commands_report_user_errors_in_one_line(tmp_path: Path) -> None:
    result = run_cli("scorer", "train", "--data", str(tmp_path), "--out", str(tmp_path / "h"))
    assert result.returncode == 2 and "perspective_scored" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("scorer", "eval", "--data", str(tmp_path), "--head", str(tmp_path))
    assert result.returncode == 2 and "no calibrated head" in result.stderr
