"""``sgeat compare``: SGEAT and a DAPT run against their common base, on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_detox.cli import main
from tests.sgeat.conftest import CI_CONFIG, tiny_overrides


def test_compare_sgeat_and_dapt_against_one_base(tiny_pretrained: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["a calm day by the sea", "you stupid idiot", "the quick brown fox",
                               "shut up you moron", "we planted trees", "the committee met today"]))
    sgeat, dapt, other = tmp_path / "sgeat", tmp_path / "dapt", tmp_path / "other"
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, sgeat), "--no-progress"]) == 0
    # The DAPT run's base evaluation is the SGEAT run's (same key): copied, then kept, not redone.
    shutil.copytree(sgeat / "evaluate" / "base", dapt / "evaluate" / "base")
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, dapt), "--no-progress",
                 "sgeat.mode=dapt", f"sgeat.corpus={corpus}"]) == 0
    metrics = [json.loads((run / "evaluate" / "base" / "metrics.json").read_text()) for run in (sgeat, dapt)]
    assert [{g: m[g] for g in ("all", "toxic", "nontoxic")} for m in metrics][0] == \
        {g: metrics[1][g] for g in ("all", "toxic", "nontoxic")}
    capsys.readouterr()

    assert main(["sgeat", "compare", str(sgeat), str(dapt)]) == 0
    out = capsys.readouterr().out
    assert "| metric | base | sgeat (standard) | dapt (dapt) |" in out
    rows = [line for line in out.splitlines() if line.startswith("| sgeat (standard) - ")]
    assert [r.split(" | ")[0] for r in rows] == ["| sgeat (standard) - base", "| sgeat (standard) - dapt (dapt)"]
    assert "| dapt (dapt) - base |" in out
    # The bootstrap follows the runs' own eval settings, so the paired CI is the run's report's.
    report_rows = (sgeat / "report" / "summary.md").read_text().splitlines()
    toxic_change = next(r for r in report_rows if r.startswith("| EMT, toxic prompts")).split(" | ")[-1].rstrip(" |")
    assert rows[0].split(" | ")[1] == toxic_change

    # A run whose base model was evaluated with other settings cannot share the base column.
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, other), "--no-progress",
                 "eval.seed=7"]) == 0
    capsys.readouterr()
    assert main(["sgeat", "compare", str(sgeat), str(other)]) == 2
    assert "its base model was evaluated differently" in capsys.readouterr().err
    assert main(["sgeat", "compare", str(sgeat), str(tmp_path / "missing")]) == 2
