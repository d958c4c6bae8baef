"""``sgeat run`` under 2 gloo ranks (DP2: generation split by sample id, FSDP training) gives the
corpus and the metrics of the single-process run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from megatron_detox.cli import main
from tests.distributed import run_distributed
from tests.sgeat.conftest import CI_CONFIG, tiny_overrides

# Micro batch 1: the global batch of 2 splits over 2 data-parallel ranks.
LAYOUT = ["train.micro_batch_size=1", "parallel.dp_shard=-1"]


def _pipeline_rank(rank: int, world_size: int, overrides: list[str]) -> dict[str, Any]:
    from megatron_detox.config import load_config
    from megatron_detox.sgeat import run_pipeline

    run_pipeline(load_config(CI_CONFIG, overrides), progress=False)
    return _results(Path(load_config(CI_CONFIG, overrides).sgeat.work_dir)) if rank == 0 else {}


def _results(work: Path) -> dict[str, Any]:
    manifest = json.loads((work / "manifest.json").read_text())
    metrics = {}
    for name in ("base", "detox"):
        tox = json.loads((work / "evaluate" / name / "metrics.json").read_text())
        ppl = json.loads((work / "evaluate" / name / "perplexity.json").read_text())
        metrics[name] = {"emt": [tox[g]["expected_max_toxicity"] for g in ("toxic", "nontoxic")],
                         "tp": [tox[g]["toxicity_probability"] for g in ("toxic", "nontoxic")],
                         "ppl": [v["perplexity"] for v in ppl.values()]}
    return {"corpus": (work / "generate" / "generations.jsonl").read_text(),
            "kept": (work / "filter" / "kept.jsonl").read_text(),
            "loss": manifest["stages"]["train"]["counts"]["final_loss"], "metrics": metrics}


@pytest.mark.slow
def test_two_ranks_give_the_single_process_corpus_and_metrics(tiny_pretrained: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, single), *LAYOUT,
                 "--no-progress"]) == 0
    expected = _results(single)
    (got, _) = run_distributed(_pipeline_rank, 2, [*tiny_overrides(tiny_pretrained, tmp_path / "dp2"), *LAYOUT])
    assert got["corpus"] == expected["corpus"] and got["kept"] == expected["kept"]
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    for name in ("base", "detox"):
        for key in ("emt", "tp", "ppl"):
            assert got["metrics"][name][key] == pytest.approx(expected["metrics"][name][key], rel=1e-3), (name, key)
