"""Incremental decoding through the KV cache gives the logits of a full recomputation."""

from __future__ import annotations

import pytest
import torch

from megatron_detox.models import KVCache, ModelConfig, build_model

GPT = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=300, max_position_embeddings=32)
LLAMA = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                    vocab_size=300, max_position_embeddings=32, position_embedding="rope", normalization="rmsnorm",
                    activation="swiglu", add_bias_linear=False, tie_word_embeddings=False)


@pytest.mark.parametrize("cfg", [GPT, LLAMA], ids=["gpt", "llama"])
@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(cfg: ModelConfig) -> None:
    model = build_model(cfg, seed=0).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(tokens)  # [batch, seq, padded_vocab]

    prompt_len, max_len = 5, 16  # cache longer than the sequence: unwritten slots must stay masked
    cache = KVCache(range(cfg.num_layers), 2, max_len, cfg.kv_heads, cfg.head_dim)
    steps = [model(tokens[:, :prompt_len], cache=cache, cache_pos=torch.arange(prompt_len))]
    for pos in range(prompt_len, tokens.shape[1]):
        steps.append(model(tokens[:, pos : pos + 1], cache=cache, cache_pos=torch.tensor([pos])))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
