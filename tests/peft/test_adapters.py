from __future__ import annotations

import pytest
import torch
from peft_tiny import GPT, LLAMA, build
from torch import nn

from megatron_detox.config import AdapterConfig
from megatron_detox.errors import UserError
from megatron_detox.peft.adapters import BottleneckAdapter, adapter_num_params, apply_adapters


def test_zero_init_adapters_leave_logits_bit_identical(tiny_cfg, tokens):
    model = build(tiny_cfg)
    base = model(tokens)
    apply_adapters(model, tiny_cfg, AdapterConfig(bottleneck=8), seed=3)
    assert isinstance(model.layers["0"].mlp_adapter, BottleneckAdapter)
    assert torch.equal(model(tokens), base)


def test_zero_init_identity_holds_in_training_mode_with_dropout(tiny_cfg, tokens):
    model = build(tiny_cfg)
    base = model(tokens)
    apply_adapters(model, tiny_cfg, AdapterConfig(bottleneck=8, dropout=0.5), seed=3)
    model.train()  # the base configs have no dropout; the adapter's dropout acts on a zero branch
    assert torch.equal(model(tokens), base)


def test_nonzero_up_init_changes_logits(tiny_cfg, tokens):
    model = build(tiny_cfg)
    base = model(tokens)
    apply_adapters(model, tiny_cfg, AdapterConfig(bottleneck=8, init_std=0.02), seed=3)
    out = model(tokens)
    assert not torch.equal(out, base)
    assert torch.allclose(out, base, atol=0.5)  # near the base model, not far from it


def test_adapter_math_is_houlsby_bottleneck():
    adapter = BottleneckAdapter(6, 3, activation="relu")
    y = torch.randn(2, 4, 6)
    expected = y + (torch.relu(y @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias)
    torch.testing.assert_close(adapter(y), expected)


@pytest.mark.parametrize("placement,seams", [("attention", {"attention_adapter"}), ("mlp", {"mlp_adapter"}),
                                             ("both", {"attention_adapter", "mlp_adapter"})])
def test_placement_and_layer_selection(placement, seams):
    cfg = GPT.replace(num_layers=3)
    model = build(cfg)
    apply_adapters(model, cfg, AdapterConfig(bottleneck=4, placement=placement, layers=[0, 2]))
    for layer_id, block in model.layers.items():
        adapted = {s for s in ("attention_adapter", "mlp_adapter") if isinstance(getattr(block, s), BottleneckAdapter)}
        assert adapted == (seams if layer_id in ("0", "2") else set())


@pytest.mark.parametrize("cfg,adapter,expected", [
    # 2 layers x 2 seams x (2*32*8 + 8 + 32) = 4 * 552
    (GPT, AdapterConfig(bottleneck=8), 2208),
    # 1 layer x 1 seam x (2*32*5 + 5 + 32)
    (LLAMA, AdapterConfig(bottleneck=5, placement="mlp", layers=[1]), 357),
])
def test_closed_form_count(cfg, adapter, expected):
    model = build(cfg)
    before = sum(p.numel() for p in model.parameters())
    apply_adapters(model, cfg, adapter)
    assert adapter_num_params(cfg, adapter) == expected
    assert sum(p.numel() for p in model.parameters()) - before == expected


@pytest.mark.parametrize("field,value", [("bottleneck", 0), ("dropout", 1.0), ("init_std", -1.0), ("layers", [5])])
def test_bad_config_is_a_user_error(field, value):
    with pytest.raises(UserError, match=f"peft.adapter.{field}"):
        apply_adapters(build(GPT), GPT, AdapterConfig(**{field: value}))


def test_adapter_chain_is_one_graph_without_breaks():
    # What apply_adapters(compile=True) compiles: one fullgraph region, no Python hooks.
    adapter = BottleneckAdapter(16, 4)
    explanation = torch._dynamo.explain(adapter)(torch.randn(2, 3, 16))
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0


@pytest.mark.slow
def test_compiled_adapters_match_eager(tokens):
    cfg = LLAMA
    eager, compiled = build(cfg), build(cfg)
    apply_adapters(eager, cfg, AdapterConfig(bottleneck=8, init_std=0.05), seed=1)
    apply_adapters(compiled, cfg, AdapterConfig(bottleneck=8, init_std=0.05), seed=1, compile=True)
    torch.testing.assert_close(compiled(tokens), eager(tokens), rtol=1e-5, atol=1e-5)


def test_meta_surgery_leaves_parameters_for_initial_values():
    with torch.device("meta"):
        model = nn.Module()
        model.add_module("layers", build_meta_layers())
    apply_adapters(model, GPT, AdapterConfig(bottleneck=4))
    assert model.layers["0"].mlp_adapter.up.weight.is_meta


def build_meta_layers() -> nn.ModuleDict:
    from megatron_detox.models.gpt import TransformerBlock

    return nn.ModuleDict({"0": TransformerBlock(GPT, 0)})
