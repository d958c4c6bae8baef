"""``sgeat run`` end to end on configs/sgeat/ci.yaml: resume, invalidation, status, the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.cli import main
from megatron_detox.jsonl import iter_jsonl
from megatron_detox.sgeat import STAGES
from tests.sgeat.conftest import CI_CONFIG, tiny_overrides


def _manifest(work_dir: Path) -> dict:
    return json.loads((work_dir / "manifest.json").read_text())


def test_ci_config_runs_every_stage_then_resumes_and_invalidates(tiny_pretrained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "run"
    args = ["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    manifest = _manifest(work)
    assert list(manifest["stages"]) == list(STAGES)
    assert all(record["status"] == "done" for record in manifest["stages"].values())
    assert len(manifest["config_hash"]) == 64 and manifest["config"]["sgeat"]["work_dir"] == str(work)
    counts = {name: record["counts"] for name, record in manifest["stages"].items()}
    assert counts["generate"]["samples"] == 8
    ids = [record["id"] for _, record in iter_jsonl(work / "generate" / "generations.jsonl")]
    assert sorted(ids) == list(range(8))
    assert counts["score"]["num_scored"] == 8 and counts["filter"]["num_kept"] == 4
    assert counts["preprocess"]["documents"] == 4 and counts["train"]["steps"] == 3
    for name in ("base", "detox"):
        metrics = json.loads((work / "evaluate" / name / "metrics.json").read_text())
        assert metrics["scorer"] == "profanity" and metrics["num_samples"] == 6 * 2  # 3 + 3 prompts x 2
        assert ">= 0.5" in metrics["definitions"]["toxicity_probability"]
        assert (work / "evaluate" / name / "perplexity.json").is_file()
    assert (work / "report" / "report.html").is_file()
    assert "| metric | base | detox | change [95% CI] |" in out and "Toxicity scorer: profanity" in out
    for stage in STAGES:  # one line as each stage starts and one as it ends, with its time
        assert f"] {stage}: start" in err and f"] {stage}: done in " in err

    # The same command again: nothing to do.
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count(": skipped, finished earlier") == len(STAGES)
    assert {n: r["counts"] for n, r in _manifest(work)["stages"].items()} == counts

    # A filter setting changes: generation and scoring are kept, the filter and what follows rerun.
    assert main([*args, "sgeat.keep_fraction=0.75"]) == 0
    err = capsys.readouterr().err
    assert "generate: skipped" in err and "score: skipped" in err
    assert "filter: settings changed (keep_fraction: 0.5 -> 0.75); it reruns" in err
    after = _manifest(work)["stages"]
    assert after["filter"]["counts"]["num_kept"] == 6 and after["train"]["status"] == "done"
    # The base model's evaluation did not depend on the corpus: it is kept, not redone.
    assert "generate: rank 0: 6 samples" not in err

    assert main(["sgeat", "status", str(work)]) == 0
    status = capsys.readouterr().out
    for stage in STAGES:
        assert f"  {stage:<10} done" in status


def test_from_stage_reruns_that_stage_and_until_stage_stops(tiny_pretrained: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "run"
    args = ["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress"]
    assert main([*args, "--until-stage", "filter"]) == 0
    assert list(_manifest(work)["stages"]) == ["generate", "score", "filter"]
    assert not (work / "preprocess").exists()
    capsys.readouterr()
    assert main([*args, "--from-stage", "score", "--until-stage", "filter"]) == 0
    err = capsys.readouterr().err
    assert "generate: skipped" in err and "score: rerun requested (--from-stage)" in err


@pytest.mark.slow
def test_ci_config_as_shipped_on_the_embedded_model(smollm2_gguf: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    assert main(["sgeat", "run", str(CI_CONFIG), f"sgeat.work_dir={work}", "--no-progress"]) == 0
    stages = _manifest(work)["stages"]
    assert all(record["status"] == "done" for record in stages.values())
    assert stages["generate"]["settings"]["model"] == "smollm2-135m"
    assert (work / "report" / "summary.md").read_text().startswith("| metric | base | detox |")
