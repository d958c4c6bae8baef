"""Tensor and pipeline parallelism: the engine runs the sharded model unchanged, same tokens as one process."""

from __future__ import annotations

import pytest
from distributed import run_distributed

from megatron_detox.generate.engine import generate_batch
from megatron_detox.generate.sampling import SamplingParams

from .conftest import tiny_config, tiny_model

VOCAB = 100
PROMPTS = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6], [42, 17]]


def generate_all(model) -> list[list[list[int]]]:  # type: ignore[no-untyped-def]
    """Greedy and top-p tokens for PROMPTS (ragged, so padding and masks are exercised)."""
    out = []
    for params in (SamplingParams(greedy=True), SamplingParams(top_p=0.9)):
        results = generate_batch(model, PROMPTS, list(range(len(PROMPTS))), params, max_new_tokens=10,
                                 vocab_size=VOCAB, head_dim=model.config.head_dim, seed=4)
        out.append([g.tokens for g in results])
    return out


def tp_worker(rank: int, world_size: int) -> list[list[list[int]]]:
    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.parallel import shard_for_generation
    from megatron_detox.parallel.env import init_distributed

    cfg = tiny_config(VOCAB)
    model = tiny_model(cfg)
    env = init_distributed(ParallelConfig(tp=world_size), cfg)
    runner, layout = shard_for_generation(model, env)
    assert runner is model and layout.dp_size == 1 and layout.writer_rank == (rank == 0)
    assert model.layers["0"].attention.k_proj.weight.to_local().shape[0] == cfg.kv_heads * cfg.head_dim // 2
    return generate_all(model)


def pp_worker(rank: int, world_size: int) -> list[list[list[int]]]:
    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.parallel import shard_for_generation
    from megatron_detox.parallel.env import init_distributed

    cfg = tiny_config(VOCAB)
    env = init_distributed(ParallelConfig(pp=world_size, dp_shard=1), cfg)
    runner, layout = shard_for_generation(tiny_model(cfg), env)
    assert list(runner.layers.keys()) == [str(rank)]  # one layer per stage, its own KV cache
    assert layout.dp_size == 1 and layout.writer_rank == (rank == 0)
    return generate_all(runner)


@pytest.mark.distributed
def test_tp2_equals_tp1() -> None:
    expected = generate_all(tiny_model(tiny_config(VOCAB)))
    results = run_distributed(tp_worker, 2)
    assert results[0] == results[1]  # both TP ranks sampled the same tokens
    assert results[0][0] == expected[0]  # greedy
    assert results[0][1] == expected[1]  # top-p with per-sample generators


@pytest.mark.distributed
def test_pp2_equals_single_process() -> None:
    expected = generate_all(tiny_model(tiny_config(VOCAB)))
    results = run_distributed(pp_worker, 2)
    assert results[0] == results[1] == expected


def budget_worker(rank: int, world_size: int, out_dir: str) -> dict[str, list[int]]:
    """TP2 through the generation stage, each rank with its own memory budget."""
    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.engine import kv_cache_bytes
    from megatron_detox.generate.parallel import min_over_ranks, shard_for_generation
    from megatron_detox.generate.stage import GenerationSpec, run_generation_stage
    from megatron_detox.parallel.env import init_distributed

    cfg = tiny_config(VOCAB)
    env = init_distributed(ParallelConfig(tp=world_size), cfg, device="cpu")
    runner, layout = shard_for_generation(tiny_model(cfg), env)
    spec = GenerationSpec(params=SamplingParams(top_p=0.9), max_new_tokens=6, seed=2, vocab_size=VOCAB,
                          head_dim=cfg.head_dim, context_length=cfg.max_position_embeddings)
    items = _items()
    longest = max(len(_TOKENIZER.encode(item.prompt)) for item in items) + spec.max_new_tokens
    per_row = kv_cache_bytes(runner, cfg.head_dim, 1, longest)
    agreed: dict[str, list[int]] = {"asked": [], "agreed": []}
    agree = min_over_ranks(env.device)

    def recording(value: int) -> int:
        agreed["asked"].append(value)
        agreed["agreed"].append(agree(value))
        return agreed["agreed"][-1]

    import torch.distributed as dist

    # Rank 0 has room for 2 rows, rank 1 for 5: unagreed they would run different batches and hang.
    run_generation_stage(runner, _TOKENIZER, items, out_dir, spec, settings={"test": 1}, batch_size=8,
                         dp_rank=layout.dp_rank, dp_size=layout.dp_size, writer_rank=layout.writer_rank,
                         merger_rank=layout.merger_rank, barrier=dist.barrier, progress=False,
                         memory_budget_bytes=per_row * (2 if rank == 0 else 5), agree_batch_size=recording)
    return agreed


class _Ids:
    """A tokenizer over ids written as text ("5 9 13"), enough for the stage."""

    vocab_size, bos, eod = VOCAB, 1, 1

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


_TOKENIZER = _Ids()


def _items():  # type: ignore[no-untyped-def]
    from megatron_detox.generate.prompts import prompt_items

    return prompt_items([" ".join(map(str, p)) for p in PROMPTS], 3)


@pytest.mark.distributed
def test_ranks_with_different_memory_agree_on_the_batch_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from megatron_detox.generate.stage import GenerationSpec, run_generation_stage

    results = run_distributed(budget_worker, 2, str(tmp_path / "tp2"))
    assert [r["asked"] for r in results] == [[2], [5]]
    assert [r["agreed"] for r in results] == [[2], [2]]
    cfg = tiny_config(VOCAB)
    spec = GenerationSpec(params=SamplingParams(top_p=0.9), max_new_tokens=6, seed=2, vocab_size=VOCAB,
                          head_dim=cfg.head_dim, context_length=cfg.max_position_embeddings)
    run_generation_stage(tiny_model(cfg), _TOKENIZER, _items(), tmp_path / "one", spec, settings={"test": 1},
                         batch_size=8, progress=False)
    assert (tmp_path / "tp2/generations.jsonl").read_text() == (tmp_path / "one/generations.jsonl").read_text()
