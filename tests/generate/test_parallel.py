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
