from __future__ import annotations

import pytest
import torch
from peft_tiny import GPT, LLAMA, build

from megatron_detox.config import PrefixConfig
from megatron_detox.errors import UserError
from megatron_detox.models import KVCache
from megatron_detox.peft.prefix import (
    PrefixKV,
    apply_prefix,
    fill_prefix_cache,
    fold_prefix_state,
    init_prefix_from_tokens,
    prefix_init_tokens,
    prefix_num_params,
    prefix_state_from_tokens,
)


@pytest.mark.parametrize("reparameterize", [False, True])
def test_empty_prefix_is_the_identity(tiny_cfg, tokens, reparameterize):
    model = build(tiny_cfg)
    base = model(tokens)
    apply_prefix(model, tiny_cfg, PrefixConfig(length=0, reparameterize=reparameterize, hidden_size=8))
    assert torch.equal(model(tokens), base)


def test_prefix_equals_attending_to_a_cached_context(tiny_cfg, tokens):
    """A prefix holding the K/V of a real context c (from a KV cache) makes the model
    compute exactly what it computes for tokens placed after c: prefix semantics for
    every layer, GQA and both position schemes."""
    context = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(1))
    P, seq = context.shape[1], tokens.shape[1]
    model = build(tiny_cfg)
    full = model(torch.cat([context.expand(tokens.shape[0], -1), tokens], dim=1))[:, P:]

    cache = KVCache(range(tiny_cfg.num_layers), 1, P, tiny_cfg.kv_heads, tiny_cfg.head_dim)
    model(context, cache=cache, cache_pos=torch.arange(P))
    apply_prefix(model, tiny_cfg, PrefixConfig(length=P, reparameterize=False))
    with torch.no_grad():
        for layer_id, block in model.layers.items():
            block.attention.prefix.key.copy_(cache.keys[int(layer_id)][0].transpose(0, 1))  # [P, kv_heads, head_dim]
            block.attention.prefix.value.copy_(cache.values[int(layer_id)][0].transpose(0, 1))
    positions = torch.arange(P, P + seq)[None]  # real tokens continue after the context
    torch.testing.assert_close(model(tokens, positions=positions), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reparameterize", [False, True])
def test_real_token_init_reproduces_the_context(tiny_cfg, tokens, reparameterize):
    context = torch.randint(0, 97, (5,), generator=torch.Generator().manual_seed(3))
    model = build(tiny_cfg)
    full = model(torch.cat([context[None].expand(tokens.shape[0], -1), tokens], dim=1))[:, 5:]
    apply_prefix(model, tiny_cfg, PrefixConfig(length=5, reparameterize=reparameterize, hidden_size=8), seed=1)
    init_prefix_from_tokens(model, tiny_cfg, context)
    positions = torch.arange(5, 5 + tokens.shape[1])[None]
    torch.testing.assert_close(model(tokens, positions=positions), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="needs exactly that many"):
        init_prefix_from_tokens(model, tiny_cfg, context[:3])


def test_prefix_state_from_tokens_feeds_initial_values(tokens):
    from megatron_detox.config import PeftConfig
    from megatron_detox.peft.surgery import peft_initial_values

    cfg, prefix_cfg = LLAMA, PrefixConfig(length=4, reparameterize=False)
    context = torch.randint(0, 97, (4,), generator=torch.Generator().manual_seed(4))
    base = build(cfg)
    state = prefix_state_from_tokens(base, cfg, prefix_cfg, context)
    assert base.layers["0"].attention.prefix is None  # the base model is not modified
    values = peft_initial_values(cfg, "prefix", PeftConfig(prefix=prefix_cfg), seed=0, overrides=state)
    model = build(cfg)
    apply_prefix(model, cfg, prefix_cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".prefix." in name:
                param.copy_(values(name, param.shape))
    full = base(torch.cat([context[None].expand(tokens.shape[0], -1), tokens], dim=1))[:, 4:]
    positions = torch.arange(4, 4 + tokens.shape[1])[None]
    torch.testing.assert_close(model(tokens, positions=positions), full, rtol=1e-5, atol=1e-5)


def test_prefix_init_tokens_repeat_or_cut():
    assert prefix_init_tokens([1, 2], 5).tolist() == [1, 2, 1, 2, 1]
    assert prefix_init_tokens([1, 2, 3], 2).tolist() == [1, 2]


@pytest.mark.parametrize("reparameterize", [False, True])
def test_greedy_decoding_with_prefix_in_kv_cache_equals_recomputation(tiny_cfg, reparameterize):
    P, new_tokens = 3, 6
    model = build(tiny_cfg)
    apply_prefix(model, tiny_cfg, PrefixConfig(length=P, reparameterize=reparameterize, hidden_size=8), seed=5)
    with torch.no_grad():  # make the prefix matter: scale up its keys/values
        for name, p in model.named_parameters():
            if ".prefix." in name:
                p.mul_(20)
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(2))

    # Recompute: the whole sequence each step, prefix injected by the attention seam.
    seq, recomputed = prompt, []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(seq)[:, -1]
            recomputed.append(logits)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)

    # Cached: prefix in slots [0, P), token t at slot P + t with position t.
    cache = KVCache(range(tiny_cfg.num_layers), 2, P + prompt.shape[1] + new_tokens, tiny_cfg.kv_heads,
                    tiny_cfg.head_dim)
    assert fill_prefix_cache(model, cache) == P
    cached, t = [], prompt.shape[1]
    with torch.no_grad():
        logits = model(prompt, positions=torch.arange(t)[None], cache=cache, cache_pos=P + torch.arange(t))[:, -1]
        for _ in range(new_tokens):
            cached.append(logits)
            token = logits.argmax(-1, keepdim=True)
            logits = model(token, positions=torch.tensor([[t]]), cache=cache, cache_pos=torch.tensor([P + t]))[:, -1]
            t += 1
    assert torch.equal(torch.stack(cached).argmax(-1), torch.stack(recomputed).argmax(-1))
    torch.testing.assert_close(torch.stack(cached), torch.stack(recomputed), rtol=1e-5, atol=1e-5)
    no_prefix = build(tiny_cfg)(prompt)[:, -1]
    assert not torch.allclose(no_prefix, recomputed[0], atol=1e-3)  # the prefix changed the model


def test_folded_reparameterization_gives_the_same_logits(tiny_cfg, tokens):
    trained = build(tiny_cfg)
    apply_prefix(trained, tiny_cfg, PrefixConfig(length=4, reparameterize=True, hidden_size=8), seed=2)
    state = {n: p.detach() for n, p in trained.named_parameters() if ".prefix." in n}
    folded = fold_prefix_state(state, tiny_cfg.kv_heads, tiny_cfg.head_dim)
    assert sorted(folded) == sorted(f"layers.{i}.attention.prefix.{part}"
                                    for i in range(tiny_cfg.num_layers) for part in ("key", "value"))
    static = build(tiny_cfg)
    apply_prefix(static, tiny_cfg, PrefixConfig(length=4, reparameterize=False))
    static.load_state_dict(folded, strict=False)
    torch.testing.assert_close(static(tokens), trained(tokens), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg,prefix,expected", [
    (GPT, PrefixConfig(length=3, reparameterize=False), 2 * 2 * 3 * 32),  # L * 2 * P * kv * d, kv*d = 32
    # L * (P m + m m + m + 2 (m kv d + kv d)), kv*d = 2*8 = 16, m = 8
    (LLAMA, PrefixConfig(length=3, reparameterize=True, hidden_size=8), 2 * (24 + 72 + 2 * (128 + 16))),
])
def test_closed_form_count(cfg, prefix, expected):
    model = build(cfg)
    before = sum(p.numel() for p in model.parameters())
    apply_prefix(model, cfg, prefix)
    assert prefix_num_params(cfg, prefix) == expected
    assert sum(p.numel() for p in model.parameters()) - before == expected


def test_prefix_shapes_follow_query_groups():
    prefix = PrefixKV(3, kv_heads=2, head_dim=8)
    k, v = prefix(5)
    assert k.shape == v.shape == (5, 3, 2, 8)


def test_cache_too_small_for_the_prefix_is_a_user_error():
    model = build(GPT)
    apply_prefix(model, GPT, PrefixConfig(length=4, reparameterize=False))
    with pytest.raises(UserError, match="peft.prefix.length=4"):
        fill_prefix_cache(model, KVCache(range(2), 1, 4, GPT.kv_heads, GPT.head_dim))


def test_negative_length_is_a_user_error():
    with pytest.raises(UserError, match="peft.prefix.length"):
        apply_prefix(build(GPT), GPT, PrefixConfig(length=-1))
