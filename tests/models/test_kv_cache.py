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


class _RowLengthsCache(KVCache):
    """A cache whose one-token steps attend row by row over ``lengths`` leading slots."""

    lengths: list[int] | None = None

    def row_lengths(self) -> list[int] | None:
        return self.lengths


@pytest.mark.parametrize("cfg", [GPT, LLAMA], ids=["gpt", "llama"])
@torch.no_grad()
def test_row_by_row_decode_attention_equals_the_masked_call(cfg: ModelConfig) -> None:
    """Rows attending over their own first slots give the logits of one masked call;
    a row of length 0 is skipped (zeros) and changes nothing for the others."""
    model = build_model(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(1)
    cache = _RowLengthsCache(range(cfg.num_layers), 3, 10, cfg.kv_heads, cfg.head_dim)
    for store in (cache.keys, cache.values):
        for buffer in store.values():
            buffer.normal_(generator=gen)  # stand-ins for earlier steps; only the lengths hide slots
    token = torch.randint(0, cfg.vocab_size, (3, 1), generator=gen)
    positions, slot = torch.tensor([[9], [3], [5]]), torch.tensor([9])  # every row writes slot 9
    visible = torch.arange(10)[None] < torch.tensor([10, 4, 6])[:, None]  # [batch, slots]
    masked = model(token, positions, visible[:, None, None, :], cache, slot)
    cache.lengths = [10, 4, 6]
    by_row = model(token, positions, None, cache, slot)
    torch.testing.assert_close(by_row, masked, atol=1e-5, rtol=1e-5)
    cache.lengths = [10, 4, 0]
    skipped = model(token, positions, None, cache, slot)
    torch.testing.assert_close(skipped[:2], masked[:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(skipped[2], masked[2])  # row 2 attended over nothing
