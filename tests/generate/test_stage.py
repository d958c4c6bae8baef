"""The stage: records, merge, manifest, and the same texts on 1 and 2 data-parallel ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import run_distributed

from megatron_detox.errors import UserError
from megatron_detox.generate.prompts import prompt_items, unconditional_items
from megatron_detox.generate.sampling import SamplingParams
from megatron_detox.generate.stage import GenerationSpec, run_generation_stage

PROMPTS = ["The capital of France", "A quick brown fox", "", "Toxicity filters keep the least toxic half"]


def load(folder: str):  # type: ignore[no-untyped-def]
    from megatron_detox.models.loading import load_model
    from megatron_detox.tokenizers import load_tokenizer

    model, cfg = load_model(folder)
    tokenizer = load_tokenizer(folder)
    spec = GenerationSpec(SamplingParams(top_p=0.9), max_new_tokens=12, seed=11, vocab_size=tokenizer.vocab_size,
                          head_dim=cfg.head_dim, context_length=cfg.max_position_embeddings,
                          stop_ids=(tokenizer.eod,))
    return model, tokenizer, spec


def stage(folder: str, out: str, batch_size: int, dp_rank: int = 0, dp_size: int = 1, barrier=None) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, spec = load(folder)
    run_generation_stage(model, tokenizer, prompt_items(PROMPTS, repeat=3), out, spec, settings={"seed": 11},
                         batch_size=batch_size, dp_rank=dp_rank, dp_size=dp_size, merger_rank=dp_rank == 0,
                         barrier=barrier, progress=False)


def dp_worker(rank: int, world_size: int, folder: str, out: str) -> None:
    import torch.distributed as dist

    stage(folder, out, batch_size=2, dp_rank=rank, dp_size=world_size, barrier=dist.barrier)


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.distributed
def test_one_vs_two_dp_ranks_same_texts(tmp_path: Path, tiny_hf_folder: Path) -> None:
    stage(str(tiny_hf_folder), str(tmp_path / "one"), batch_size=5)
    run_distributed(dp_worker, 2, str(tiny_hf_folder), str(tmp_path / "two"))
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert [r["id"] for r in one] == list(range(12))
    assert one == two
    assert {r["prompt_index"] for r in one} == {0, 1, 2, 3} and one[7]["sample_index"] == 1
    assert len({r["text"] for r in one}) > 6  # repeats of a prompt differ: each id has its own generator
    assert sorted((tmp_path / "two" / "shards").iterdir()) == [tmp_path / "two" / "shards" / f"rank{r}.jsonl"
                                                                for r in (0, 1)]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 12 and manifest["tokens_per_s"] > 0 and manifest["dp_size"] == 2


def test_rerun_skips_finished_and_memory_split(tmp_path: Path, tiny_hf_folder: Path) -> None:
    from megatron_detox.generate.engine import kv_cache_bytes

    model, tokenizer, spec = load(str(tiny_hf_folder))
    items = unconditional_items(5)
    # A budget that holds the KV cache of 2 rows only: batch 5 is split, not crashed.
    budget = 2 * kv_cache_bytes(model, spec.head_dim, 1, 1 + spec.max_new_tokens)

    def go(out: Path, todo: list) -> None:  # type: ignore[type-arg]
        run_generation_stage(model, tokenizer, todo, out, spec, settings={"n": 5}, batch_size=5,
                             memory_budget_bytes=budget, progress=False, cpu_workers=1)  # one shard to count

    go(tmp_path / "resumed", items[:3])  # as if stopped after 3 samples
    go(tmp_path / "resumed", items)
    go(tmp_path / "straight", items)
    metrics = (tmp_path / "resumed" / "metrics" / "rank0.jsonl").read_text().splitlines()
    assert [json.loads(m)["samples"] for m in metrics] == [2, 1, 2]  # ids 0-2, then only 3-4
    assert read(tmp_path / "resumed") == read(tmp_path / "straight")


def test_prompt_longer_than_context_is_a_user_error(tmp_path: Path, tiny_hf_folder: Path) -> None:
    model, tokenizer, spec = load(str(tiny_hf_folder))
    long = prompt_items(["fox " * 300], repeat=1)
    with pytest.raises(UserError, match="line 1: the prompt has"):
        run_generation_stage(model, tokenizer, long, tmp_path, spec, settings={}, batch_size=2, progress=False)
