"""Architecture description shared by the Megatron GPT and Llama families."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

PositionEmbedding = Literal["learned", "rope"]
Normalization = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "gelu_tanh", "swiglu"]


@dataclass
class ModelConfig:
    """One decoder-only transformer; the family is chosen by these fields.

    Megatron GPT: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
    Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases.
    """

    name: str = "custom"
    """Preset name this config came from (informational)."""
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None means one per head (MHA)."""
    ffn_hidden_size: int | None = None
    """MLP inner size; None means 4 * hidden_size."""
    vocab_size: int = 50257
    """Tokenizer vocabulary size (unpadded)."""
    make_vocab_size_divisible_by: int = 128
    """Embedding rows are padded up to a multiple of this, as Megatron does."""
    max_position_embeddings: int = 2048
    """Longest sequence the model supports (context length)."""
    position_embedding: PositionEmbedding = "learned"
    rope_theta: float = 10000.0
    normalization: Normalization = "layernorm"
    norm_eps: float = 1e-5
    activation: Activation = "gelu"
    add_bias_linear: bool = True
    """Biases on every linear layer (Megatron GPT) or none (Llama)."""
    tie_word_embeddings: bool = True
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tokenizer: str | None = None
    """Tokenizer source: 'gpt2' (vocab.json/merges.txt folder), a file, or 'gguf'."""

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def padded_vocab_size(self) -> int:
        multiple = self.make_vocab_size_divisible_by
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> list[tuple[str, object, str]]:
        """Return (field, value, reason) for every impossible value."""
        problems: list[tuple[str, object, str]] = []
        for field in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size",
                      "max_position_embeddings", "make_vocab_size_divisible_by"):
            value = getattr(self, field)
            if value <= 0:
                problems.append((field, value, "must be positive"))
        if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads:
            problems.append(("num_attention_heads", self.num_attention_heads,
                             f"must divide hidden_size={self.hidden_size}"))
        if self.num_query_groups is not None and (
            self.num_query_groups <= 0 or self.num_attention_heads % self.num_query_groups
        ):
            problems.append(("num_query_groups", self.num_query_groups,
                             f"must divide num_attention_heads={self.num_attention_heads}"))
        if self.position_embedding == "rope" and self.head_dim % 2:
            problems.append(("position_embedding", "rope", "RoPE needs an even head dimension"))
        for field in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                problems.append((field, value, "must be in [0, 1)"))
        return problems
