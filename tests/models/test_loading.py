"""load_model / build_model: spec resolution, meta build, tying, dtype, user errors."""

from __future__ import annotations

import pytest
import torch

from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig, build_model, load_model
from megatron_detox.models.state_dict import check_state_dict

CFG = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, max_position_embeddings=16)


def test_preset_without_weights_says_so() -> None:
    with pytest.raises(UserError, match="'gpt-126m' has no pretrained weights.*checkpoint"):
        load_model("gpt-126m")


def test_unknown_spec_lists_what_is_accepted() -> None:
    with pytest.raises(UserError, match="not a model preset, a .gguf file or a Hugging Face folder.*smollm2-135m"):
        load_model("gpt-9000")


def test_build_model_ties_and_initializes() -> None:
    model = build_model(CFG, dtype=torch.bfloat16, seed=0)
    assert model.output.weight is model.tok_embeddings.weight  # type: ignore[union-attr]
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    again = build_model(CFG, dtype=torch.bfloat16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_check_state_dict_names_source_and_tensor() -> None:
    state = dict(build_model(CFG, seed=0).state_dict())
    check_state_dict(CFG, state, "ckpt")
    with pytest.raises(UserError, match="ckpt: tensor 'layers.0.mlp.up_proj.weight' has shape"):
        check_state_dict(CFG, {**state, "layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}, "ckpt")
    del state["norm.bias"]
    with pytest.raises(UserError, match="ckpt: tensor 'norm.bias' is missing"):
        check_state_dict(CFG, state, "ckpt")
    with pytest.raises(UserError, match="ckpt: unexpected tensor 'extra'"):
        check_state_dict(CFG, {**build_model(CFG, seed=0).state_dict(), "extra": torch.zeros(1)}, "ckpt")
