from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft_tiny import GPT, build

from megatron_detox.config import AdapterConfig, PeftConfig, PrefixConfig
from megatron_detox.errors import UserError
from megatron_detox.models import Transformer
from megatron_detox.peft.surgery import (
    apply_peft,
    canonical_name,
    closed_form_trainable,
    init_peft_weights,
    is_peft_name,
    peft_initial_values,
    peft_state_dict,
    trainable_parameters,
)

PEFT = PeftConfig(adapter=AdapterConfig(bottleneck=4), prefix=PrefixConfig(length=3, hidden_size=8))


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_a_training_step_changes_only_peft_parameters(tiny_cfg, tokens, method):
    model = build(tiny_cfg)
    apply_peft(model, tiny_cfg, method, PEFT, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2, weight_decay=0.1)
    model.train()
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    peft = {n for n in before if is_peft_name(n)}
    assert changed <= peft  # base weights bit-identical
    # What must move: the zero-initialized up-projections (down gets no gradient while up
    # is zero) or every prefix tensor.
    must_move = {n for n in peft if ".up." in n} if method == "adapter" else peft
    assert must_move and must_move <= changed
    assert all(p.grad is None for n, p in model.named_parameters() if not is_peft_name(n))


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_trainable_count_equals_closed_form(tiny_cfg, method):
    model = build(tiny_cfg)
    apply_peft(model, tiny_cfg, method, PEFT)
    assert sum(p.numel() for p in trainable_parameters(model)) == closed_form_trainable(tiny_cfg, method, PEFT)


def test_full_method_leaves_the_model_alone(tokens):
    model = build(GPT)
    apply_peft(model, GPT, "full", PEFT)
    assert all(p.requires_grad for p in model.parameters()) and closed_form_trainable(GPT, "full", PEFT) is None


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="train.method='lora'"):
        apply_peft(build(GPT), GPT, "lora", PEFT)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_meta_build_then_initial_values_equals_direct_surgery(tiny_cfg, method):
    """The build_parallel_model path (surgery on meta, values from initial_values) gives
    the same PEFT tensors as surgery on a materialized model."""
    peft = PeftConfig(adapter=AdapterConfig(bottleneck=4, init_std=0.01), prefix=PEFT.prefix)
    direct = build(tiny_cfg)
    apply_peft(direct, tiny_cfg, method, peft, seed=9)
    with torch.device("meta"):
        meta = Transformer(tiny_cfg)
    apply_peft(meta, tiny_cfg, method, peft, seed=9)
    meta.to_empty(device="cpu")
    values = peft_initial_values(tiny_cfg, method, peft, seed=9)
    with torch.no_grad():
        for name, param in meta.named_parameters():
            value = values(name, param.shape)
            assert (value is None) == (not is_peft_name(name))
            if value is not None:
                param.copy_(value)
    expected = peft_state_dict(direct)
    assert expected and all(torch.equal(v, peft_state_dict(meta)[k]) for k, v in expected.items())
    again = build(tiny_cfg)
    apply_peft(again, tiny_cfg, method, peft, seed=9)
    init_peft_weights(again, tiny_cfg, method, peft, seed=9)
    assert all(torch.equal(v, peft_state_dict(again)[k]) for k, v in expected.items())


def test_canonical_names_strip_wrappers():
    assert canonical_name("layers.0._checkpoint_wrapped_module.mlp_adapter._orig_mod.up.weight") == \
        "layers.0.mlp_adapter.up.weight"
    assert is_peft_name("layers.3.attention.prefix.key") and not is_peft_name("layers.3.attention.k_proj.weight")
