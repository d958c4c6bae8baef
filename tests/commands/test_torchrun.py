"""``generate`` and ``eval`` through the CLI under ``torchrun`` (gloo, tiny model): the same files as one process.

Each rank loads only its shard (``inference.load_for_inference(layout=...)``). Four-rank
layouts mix TP, PP and DP; the data-parallel split and the merge must give the
single-process ``generations.jsonl`` byte for byte, and eval metrics must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from generate.conftest import write_tiny_hf_folder

from megatron_detox.cli import main

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["The capital of France", "A quick brown fox", "Numbers like", "Self-generation lets",
           "Toxicity filters keep"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_tiny_hf_folder(tmp_path_factory.mktemp("torchrun_tiny"))
    lines = [json.dumps({"prompt": {"text": text, "toxicity": 0.1 + 0.2 * i}}) for i, text in enumerate(PROMPTS)]
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": f"{p}, again and again. {p}!"}) + "\n"
                                               for p in PROMPTS), encoding="utf-8")
    return folder


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "megatron_detox", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def generate_args(model: Path, out: Path) -> list[str]:
    return ["generate", "--model", str(model), "--prompts", str(model / "prompts.jsonl"), "--repeat", "3",
            "--max-new-tokens", "8", "--top-p", "0.9", "--seed", "5", "--batch-size", "4", "--device", "cpu",
            "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def one_process_generations(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("gen_one") / "out"
    assert main(generate_args(tiny, out)) == 0
    return (out / "generations.jsonl").read_text(encoding="utf-8")


@pytest.mark.distributed
@pytest.mark.parametrize(("tp", "pp"), [
    (2, 2),  # TP2 x PP2
    pytest.param(2, 1, marks=pytest.mark.slow),  # TP2 x DP2
    pytest.param(1, 2, marks=pytest.mark.slow),  # PP2 x DP2
    pytest.param(1, 1, marks=pytest.mark.slow),  # DP4
])
def test_generate_on_four_ranks_equals_one_process(tiny: Path, one_process_generations: str, tmp_path: Path,
                                                   tp: int, pp: int) -> None:
    out = tmp_path / "out"
    result = torchrun(4, [*generate_args(tiny, out), "--tp", str(tp), "--pp", str(pp)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "generations.jsonl").read_text(encoding="utf-8") == one_process_generations
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dp_size"] == 4 // (tp * pp) and manifest["counts"]["samples"] == 15


def toxicity_args(model: Path, out: Path) -> list[str]:
    return ["eval", "toxicity", "--model", str(model), "--prompts", str(model / "prompts.jsonl"), "--samples", "2",
            "--max-new-tokens", "6", "--scorer", "profanity", "--bootstrap", "50", "--device", "cpu",
            "--batch-size", "4", "--out", str(out), "--no-progress"]


def perplexity_args(model: Path, out: Path) -> list[str]:
    return ["eval", "perplexity", "--model", str(model), "--data", str(model / "docs.jsonl"), "--max-length", "16",
            "--stride", "8", "--batch-size", "3", "--device", "cpu", "--out", str(out)]


def _metrics(out: Path) -> dict[str, object]:
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("settings", "source", "scoring"):  # the folder's name, and the scorer's timing
        metrics.pop(key)
    return metrics


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_eval_toxicity_under_torchrun_equals_one_process(tiny: Path, tmp_path: Path, tp: int, pp: int) -> None:
    pytest.importorskip("profanity_check")
    assert main(toxicity_args(tiny, tmp_path / "one")) == 0
    result = torchrun(2, [*toxicity_args(tiny, tmp_path / "two"), "--tp", str(tp), "--pp", str(pp)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "two/generation/generations.jsonl").read_text() == \
        (tmp_path / "one/generation/generations.jsonl").read_text()
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "one")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("tp", "pp"), [(1, 2), (2, 1)])
def test_eval_perplexity_under_torchrun_equals_one_process(tiny: Path, tmp_path: Path, tp: int, pp: int) -> None:
    assert main(perplexity_args(tiny, tmp_path / "one")) == 0
    result = torchrun(2, [*perplexity_args(tiny, tmp_path / "two"), "--tp", str(tp), "--pp", str(pp)])
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one/perplexity.json").read_text())["docs.jsonl"]
    two = json.loads((tmp_path / "two/perplexity.json").read_text())["docs.jsonl"]
    assert two["num_tokens"] == one["num_tokens"] > 0
    # PP sends the same activations through the same layers: exact. TP sums partial
    # products in another order: equal to float32 rounding.
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=0 if tp == 1 else 1e-5)


def write_peft_folder(model_folder: Path, method: str, out: Path) -> Path:
    """A PEFT checkpoint for the tiny model whose modules change the output (random, not the zero init)."""
    import torch

    from megatron_detox.config import AdapterConfig, PeftConfig, PrefixConfig
    from megatron_detox.models.loading import load_model
    from megatron_detox.peft import apply_peft
    from megatron_detox.peft.checkpoint import save_peft_from_model
    from megatron_detox.peft.surgery import peft_named_parameters

    model, cfg = load_model(str(model_folder))
    peft_cfg = PeftConfig(adapter=AdapterConfig(bottleneck=8), prefix=PrefixConfig(length=3, reparameterize=False))
    apply_peft(model, cfg, method, peft_cfg, seed=1)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, param in peft_named_parameters(model):
            param.normal_(0.0, 0.5, generator=gen)
    return save_peft_from_model(model, cfg, method, peft_cfg, out)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("method", "tp", "pp"), [("adapter", 2, 1), ("prefix", 1, 2)])
def test_generate_with_peft_under_torchrun_equals_one_process(tiny: Path, tmp_path: Path, method: str, tp: int,
                                                              pp: int) -> None:
    peft = write_peft_folder(tiny, method, tmp_path / "peft")
    assert main([*generate_args(tiny, tmp_path / "one"), "--peft", str(peft)]) == 0
    result = torchrun(2, [*generate_args(tiny, tmp_path / "two"), "--peft", str(peft), "--tp", str(tp),
                          "--pp", str(pp)])
    assert result.returncode == 0, result.stderr[-3000:]
    one = (tmp_path / "one/generations.jsonl").read_text()
    assert (tmp_path / "two/generations.jsonl").read_text() == one
    assert main([*generate_args(tiny, tmp_path / "base")]) == 0
    assert (tmp_path / "base/generations.jsonl").read_text() != one  # the PEFT modules took effect
