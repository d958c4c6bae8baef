"""The report: markdown + self-contained HTML with real PNG figures, one JSON per run."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.evaluate.report import build_report


def check_png(data: bytes) -> tuple[int, int]:
    """A decodable, non-blank PNG: returns (width, height)."""
    import matplotlib.image as mpimg

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 50 and height > 50
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width)
    assert float(pixels.std()) > 0.01  # something was drawn
    return width, height


def html_images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


def _toxicity(emt: float, tp: float) -> dict:
    block = {"expected_max_toxicity": emt, "expected_max_toxicity_ci": [emt - 0.05, emt + 0.05],
             "toxicity_probability": tp, "toxicity_probability_ci": [max(0.0, tp - 0.1), tp + 0.1], "num_prompts": 2}
    return {"scorer": "profanity", "all": block, "toxic": block, "nontoxic": block, "num_unscored": 1,
            "num_unscored_prompts": 0}


def _make_run(folder: Path, emt: float, ppl: float, actress_ppl: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(_toxicity(emt, 0.5)))
    rows = [{"prompt_index": i, "prompt_toxicity": t, "max_toxicity": m}
            for i, (t, m) in enumerate([(0.9, emt), (0.1, emt / 2), (0.2, None)])]
    (folder / "per_prompt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "perplexity.json").write_text(json.dumps({"wiki.txt": {"perplexity": ppl, "num_tokens": 100,
                                                                     "max_length": 64, "stride": 32}}))
    groups = {"American_actors": {"perplexity": 20.0}, "American_actresses": {"perplexity": actress_ppl}}
    spread = {"max_minus_min": abs(actress_ppl - 20.0), "max_over_min": max(actress_ppl, 20) / min(actress_ppl, 20),
              "highest": "American_actresses", "lowest": "American_actors"}
    bold = {"domains": {"gender": {"perplexity": {"groups": groups, "spread": spread}, "toxicity": None}}}
    (folder / "bold.json").write_text(json.dumps(bold))
    (folder / "lm_eval.json").write_text(json.dumps({"results": {"piqa": {"acc,none": 0.61, "alias": "piqa"}}}))
    return folder


def test_report_compares_runs(tmp_path: Path) -> None:
    base = _make_run(tmp_path / "base", 0.6, 30.0, 25.0)
    sgeat = _make_run(tmp_path / "sgeat-full", 0.3, 33.0, 22.0)
    html_path = build_report([base, sgeat], tmp_path / "report")
    html = html_path.read_text()
    images = html_images(html)
    # distribution, EMT, TP, perplexity, BOLD gender perplexity
    assert len(images) == 5
    for image in images:
        check_png(image)
    figures = sorted(p.name for p in (tmp_path / "report/figures").iterdir())
    assert figures == ["bold_gender_perplexity.png", "expected_max_toxicity.png", "perplexity.png",
                       "toxicity_distribution.png", "toxicity_probability.png"]
    markdown = (tmp_path / "report/report.md").read_text()
    assert "| base | toxic | 0.600 [0.550, 0.650] | 0.500 [0.400, 0.600] | 2 | 1 | profanity |" in markdown
    assert "| sgeat-full | wiki.txt | 33.00 | 100 | 64 | 32 |" in markdown
    assert "| base | gender | perplexity | 5.000 | 1.250 | American_actresses / American_actors | 2 |" in markdown
    assert "| sgeat-full | piqa | acc,none | 0.6100 |" in markdown
    assert "![Expected Maximum Toxicity](figures/expected_max_toxicity.png)" in markdown
    per_run = json.loads((tmp_path / "report/runs/sgeat-full.json").read_text())
    assert per_run["toxicity"]["all"]["expected_max_toxicity"] == 0.3
    assert per_run["perplexity"]["wiki.txt"]["perplexity"] == 33.0


def test_same_folder_names_are_told_apart(tmp_path: Path) -> None:
    one = _make_run(tmp_path / "a" / "eval", 0.5, 10.0, 11.0)
    two = _make_run(tmp_path / "b" / "eval", 0.4, 12.0, 13.0)
    build_report([one, two], tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report/runs").iterdir()) == ["a__eval.json", "b__eval.json"]


def test_empty_run_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no evaluation results"):
        build_report([tmp_path / "empty"], tmp_path / "report")
    with pytest.raises(UserError, match="run folder not found"):
        build_report([tmp_path / "missing"], tmp_path / "report")
