"""Parameter counts of presets, from modules built on the meta device."""

from __future__ import annotations

from typing import Any

import torch

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.presets import get_preset


def build_meta_model(cfg: ModelConfig) -> Transformer:
    """The module with shapes only: no memory is allocated, so 530B works anywhere."""
    with torch.device("meta"):
        return Transformer(cfg)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    # named_parameters() yields a tied tensor once, so tied embeddings count once.
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def preset_rows(names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        cfg = get_preset(name)
        rows.append({
            "name": name,
            "parameters": count_parameters(build_meta_model(cfg)),
            "family": "llama" if cfg.position_embedding == "rope" else "megatron-gpt",
            "num_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_query_groups": cfg.kv_heads,
            "ffn_hidden_size": cfg.ffn_size,
            "padded_vocab_size": cfg.padded_vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
        })
    return rows
