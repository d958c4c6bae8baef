"""Tiny models of both families for the PEFT tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights

GPT = ModelConfig(name="tiny-gpt", num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=97,
                  make_vocab_size_divisible_by=16, max_position_embeddings=64)
LLAMA = ModelConfig(name="tiny-llama", num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=48, vocab_size=97, make_vocab_size_divisible_by=16, max_position_embeddings=64,
                    position_embedding="rope", normalization="rmsnorm", activation="swiglu",
                    add_bias_linear=False, tie_word_embeddings=False)


def build(cfg: ModelConfig, seed: int = 7) -> Transformer:
    model = Transformer(cfg)
    init_weights(model, cfg, seed)
    return model.eval()
