"""The engine on prefix-tuned models: prefix in the cache's first P slots == the model's own prefix path."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron_detox.config import PrefixConfig
from megatron_detox.generate.engine import generate_batch, kv_cache_bytes
from megatron_detox.generate.sampling import SamplingParams
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.models.loading import build_model
from megatron_detox.peft import PrefixKV, apply_prefix, prefix_length

from .conftest import assert_eos_compaction_exact, ragged_prompts, run, tiny_config

VOCAB = 100
PREFIX = 5
GPT = dict(position_embedding="learned", normalization="layernorm", activation="gelu", add_bias_linear=True,
           num_query_groups=None)


def family_config(family: str) -> ModelConfig:
    """Llama: GQA (4 query heads, 2 kv heads), RoPE; GPT: MHA, learned positions, biases."""
    return tiny_config(VOCAB, **({} if family == "llama" else GPT))


def prefixed(cfg: ModelConfig, length: int = PREFIX, reparameterize: bool = False, seed: int = 7) -> Transformer:
    """A random base model with a random prefix; static prefixes get unit-scale keys/values so they matter."""
    model = build_model(cfg, seed=seed)
    apply_prefix(model, cfg, PrefixConfig(length=length, reparameterize=reparameterize, hidden_size=16), seed=3)
    if not reparameterize:
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, PrefixKV):
                    module.key.normal_(0.0, 1.0, generator=gen)
                    module.value.normal_(0.0, 1.0, generator=gen)
    return model.eval()


def recompute_greedy(model: Transformer, prompt: list[int], new: int) -> list[int]:
    """No cache, no padding: ``model(tokens)`` prepends the prefix to keys/values itself."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(new):
            seq.append(int(model(torch.tensor([seq]))[0, -1, :VOCAB].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize(("family", "reparameterize"), [("llama", False), ("gpt", True)])
def test_cached_greedy_with_prefix_equals_recomputation(family: str, reparameterize: bool) -> None:
    cfg = family_config(family)
    model = prefixed(cfg, reparameterize=reparameterize)
    assert prefix_length(model) == PREFIX
    prompts = _prompts(5)
    assert len({len(p) for p in prompts}) > 1  # ragged: left padding next to the prefix columns
    results = run(model, prompts, list(range(5)), SamplingParams(greedy=True), new=12)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.tokens == recompute_greedy(model, prompt, 12)
        assert result.finish_reason == "length"
    # The prefix really steers the text (otherwise the comparison above proves little).
    base = build_model(cfg, seed=7).eval()
    plain = run(base, prompts, list(range(5)), SamplingParams(greedy=True), new=12)
    assert [g.tokens for g in plain] != [g.tokens for g in results]


def test_eos_compaction_with_prefix_keeps_rows_exact() -> None:
    assert_eos_compaction_exact(prefixed(family_config("llama")), _prompts(8, seed=1))


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_sampled_with_prefix_independent_of_batch_size(family: str) -> None:
    model = prefixed(family_config(family))
    prompts = _prompts(3, seed=4)
    params = SamplingParams(top_p=0.9, temperature=1.0)
    together = run(model, prompts, [10, 11, 12], params, new=14)
    alone = [run(model, [p], [i], params, new=14)[0] for p, i in zip(prompts, [10, 11, 12], strict=True)]
    assert [(g.sample_id, g.tokens) for g in alone] == [(g.sample_id, g.tokens) for g in together]
    assert len({tuple(g.tokens) for g in together}) > 1  # real sampling, not a constant output


def test_no_prefix_output_unchanged() -> None:
    """P == 0 (a zero-length prefix module, or none) takes the plain path: same tokens as the base model."""
    cfg = family_config("llama")
    base = build_model(cfg, seed=7).eval()
    empty = prefixed(copy.deepcopy(cfg), length=0)
    assert prefix_length(base) == 0 and prefix_length(empty) == 0
    prompts = _prompts(4, seed=2)
    for params in (SamplingParams(greedy=True), SamplingParams(top_p=0.9)):
        expected = run(base, prompts, list(range(4)), params)
        assert [g.tokens for g in run(empty, prompts, list(range(4)), params)] == [g.tokens for g in expected]
    greedy = run(base, prompts, list(range(4)), SamplingParams(greedy=True))
    assert [g.tokens for g in greedy] == [recompute_greedy(base, p, 10) for p in prompts]


def test_memory_estimate_counts_prefix_slots() -> None:
    cfg = family_config("llama")
    plain = KVCache.num_bytes(cfg.num_layers, 3, 40, cfg.kv_heads, cfg.head_dim)
    assert kv_cache_bytes(build_model(cfg, seed=7), cfg.head_dim, 3, 40) == plain
    with_prefix = KVCache.num_bytes(cfg.num_layers, 3, 40 + PREFIX, cfg.kv_heads, cfg.head_dim)
    assert kv_cache_bytes(prefixed(cfg), cfg.head_dim, 3, 40) == with_prefix


PARALLEL_PROMPTS = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6], [42, 17]]


def generate_both(model) -> list[list[list[int]]]:  # type: ignore[no-untyped-def]
    """Greedy and top-p tokens for ragged prompts; ``model`` may be a pipeline stage wrapper."""
    return [[g.tokens for g in generate_batch(model, PARALLEL_PROMPTS, list(range(4)), params, max_new_tokens=8,
                                              vocab_size=VOCAB, head_dim=model.config.head_dim, seed=4)]
            for params in (SamplingParams(greedy=True), SamplingParams(top_p=0.9))]


def parallel_worker(rank: int, world_size: int, layout: str) -> list[list[list[int]]]:
    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.parallel import shard_for_generation
    from megatron_detox.parallel.env import init_distributed

    cfg = family_config("llama")
    parallel = ParallelConfig(tp=world_size) if layout == "tp" else ParallelConfig(pp=world_size, dp_shard=1)
    env = init_distributed(parallel, cfg)
    runner, _ = shard_for_generation(prefixed(cfg), env)
    assert prefix_length(runner) == PREFIX  # also through the pipeline wrapper
    return generate_both(runner)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tp", "pp"])
def test_parallel_prefix_equals_single_process(layout: str) -> None:
    """TP shards the prefix by kv head, PP fills each stage's own cache: same tokens as one process."""
    from distributed import run_distributed

    expected = generate_both(prefixed(family_config("llama")))
    assert run_distributed(parallel_worker, 2, layout) == [expected, expected]


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    return ragged_prompts(n, VOCAB, seed, max_length=9)
