"""Tiny random models for the evaluation tests (the embedded model is too slow for most)."""

from __future__ import annotations

import pytest
import torch

from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights

TINY = ModelConfig(name="tiny-eval", num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                   vocab_size=300, make_vocab_size_divisible_by=64, max_position_embeddings=128,
                   position_embedding="rope", normalization="rmsnorm", activation="swiglu",
                   add_bias_linear=False, init_method_std=0.2)


@pytest.fixture(scope="module")
def tiny_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TINY)
    init_weights(model, TINY, seed=3)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):  # type: ignore[no-untyped-def]
    """The real tokenizer embedded in the SmolLM2 GGUF (49152 tokens)."""
    from megatron_detox.tokenizers import load_tokenizer

    return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def tiny_smollm2_vocab_model() -> Transformer:
    """A tiny random Llama-style model with SmolLM2's vocabulary, for tokenizer-level tests."""
    cfg = TINY.replace(name="tiny-smollm2-vocab", vocab_size=49152, max_position_embeddings=256)
    model = Transformer(cfg)
    init_weights(model, cfg, seed=11)
    return model.eval()
