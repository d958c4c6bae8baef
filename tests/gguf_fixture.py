"""Write a llama GGUF file the way llama.cpp's ``convert_hf_to_gguf.py`` does (shared by tests)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from megatron_detox.models.config import ModelConfig

_LAYER_NAMES = {"attention_norm": "attn_norm", "attention.q_proj": "attn_q", "attention.k_proj": "attn_k",
                "attention.v_proj": "attn_v", "attention.o_proj": "attn_output", "mlp_norm": "ffn_norm",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (rotate-half -> interleaved pairs)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor], arch: str = "llama") -> None:
    """``state`` (our names, vocab padded) as a GGUF file of ``arch`` with float32 tensors."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.ffn_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", state["tok_embeddings.weight"][: cfg.vocab_size].numpy())
    writer.add_tensor("output_norm.weight", state["norm.weight"].numpy())
    if not cfg.tie_word_embeddings:
        writer.add_tensor("output.weight", state["output.weight"][: cfg.vocab_size].numpy())
    for i in range(cfg.num_layers):
        for ours, theirs in _LAYER_NAMES.items():
            weight = state[f"layers.{i}.{ours}.weight"].numpy()
            if theirs in ("attn_q", "attn_k"):
                weight = llama_cpp_permute(weight, cfg.num_attention_heads if theirs == "attn_q" else cfg.kv_heads)
            writer.add_tensor(f"blk.{i}.{theirs}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
