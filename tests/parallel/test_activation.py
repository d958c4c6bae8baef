"""Activation checkpointing (full, selective) and per-block compile change speed or memory, never the gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.parallel.activation import apply_activation_checkpointing, apply_compile

CFG = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=48,
                  vocab_size=100, make_vocab_size_divisible_by=64, max_position_embeddings=16,
                  position_embedding="rope", normalization="rmsnorm", activation="swiglu", add_bias_linear=False)


def _grads(mode: str, compile: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    model = Transformer(CFG)
    init_weights(model, CFG, 3)
    apply_activation_checkpointing(model, mode)  # type: ignore[arg-type]
    if compile:
        apply_compile(model)
    tokens = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Tensors autograd keeps for backward outside checkpointed regions (checkpointing
        # installs its own inner hooks, so what it drops never reaches this one).
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_keeps_gradients_and_names(mode: str) -> None:
    reference, saved = _grads("none")
    grads, saved_ckpt = _grads(mode)
    assert grads.keys() == reference.keys()  # no wrapper prefixes in parameter names
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7)
    assert saved_ckpt < saved  # the blocks' activations were not kept


def test_compiled_blocks_keep_gradients_and_names() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    reference, _ = _grads("none")
    grads, _ = _grads("selective", compile=True)  # as the trainer combines them
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks really went through torch.compile
    assert grads.keys() == reference.keys()  # no _orig_mod prefixes
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)
