"""One decoder-only transformer for the Megatron GPT and Llama families.

Plain PyTorch, no torch.distributed: tensor/pipeline/data parallelism are applied
from outside (``megatron_detox.parallel``). Heads are inferred from projection output
sizes (``view(b, s, -1, head_dim)``), so a column-sharded projection simply yields
fewer local heads.

Seams for parameter-efficient tuning (``megatron_detox.peft``):
- ``TransformerBlock.attention_adapter`` / ``mlp_adapter``: ``nn.Identity`` by default,
  applied to the sublayer output before dropout and the residual add (Houlsby placement).
- ``Attention.prefix``: ``None`` by default; a module returning prefix keys/values
  ``[batch, P, kv_heads, head_dim]`` that are prepended to the keys (no position).
  With a KV cache the prefix lives in the cache's first P slots instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.models.masks import causal_mask

Rope = tuple[Tensor, Tensor]


def build_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.normalization == "rmsnorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> Rope:
    """cos and signed sin tables ``[batch, seq, 1, head_dim]`` for the given positions.

    Rotate-half layout, with the sign of the rotation folded into the first half of the
    sin table, so :func:`apply_rope` is two products and a sum (bit-identical to
    ``x * cos + rotate_half(x) * sin``).
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    freqs = positions.float()[..., None, None] * inv_freq  # [batch, seq, 1, head_dim/2]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate ``x`` ([batch, seq, heads, head_dim]) by per-position angles."""
    cos, sin = (t.to(x.dtype) for t in rope)
    # The halves swapped, as a flip of a [2, half] view: the same values as concatenating
    # the slices, but its backward is one flip where slices' backwards write zero-filled
    # buffers (~2 % of a training step on CPU).
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return x * cos + swapped * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = cfg.head_dim
        self.dropout_p = cfg.attention_dropout
        bias = cfg.add_bias_linear
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.prefix: nn.Module | None = None

    def forward(
        self,
        x: Tensor,
        rope: Rope | None,
        mask: Tensor | None,
        cache: KVCache | None = None,
        cache_pos: Tensor | None = None,
    ) -> Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim)  # [batch, seq, heads, head_dim]
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim)  # [batch, seq, kv_heads, head_dim]
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim)
        heads, kv_heads = q.shape[2], k.shape[2]
        if rope is not None:  # queries and keys rotated as one tensor: half the small kernels
            qk = apply_rope(torch.cat((q, k), dim=2), rope)
            q, k = qk.split((heads, kv_heads), dim=2)  # backward: one cat, not two zero-filled slices

        is_causal = False
        if cache is not None:
            assert cache_pos is not None, "cache_pos is required with a KV cache"
            k, v = cache.update(self.layer_id, cache_pos, k, v)  # [batch, kv_heads, kv_len, head_dim]
            if mask is None:
                mask = cache.default_mask(cache_pos, k.shape[2])
        else:
            if self.prefix is not None:
                prefix_k, prefix_v = self.prefix(batch)  # [batch, P, kv_heads, head_dim]
                prefix_len = prefix_k.shape[1]
                k = torch.cat([prefix_k.to(k.dtype), k], dim=1)
                v = torch.cat([prefix_v.to(v.dtype), v], dim=1)
                if mask is None:
                    mask = causal_mask(torch.arange(seq, device=x.device), seq, prefix_len)
                else:
                    mask = torch.cat([mask.new_ones(*mask.shape[:-1], prefix_len), mask], dim=-1)
            elif mask is None:
                is_causal = True
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [batch, kv_heads, kv_len, head_dim]

        # Decoding one token with grouped-query attention: the query heads sharing a
        # key/value head become that head's rows ([batch, kv_heads, group, head_dim]), so
        # attention reads each cached key once rather than once per query head. The mask
        # is per key, the same for every row.
        grouped = seq == 1 and heads != kv_heads and not is_causal and (mask is None or mask.shape[1] == 1)
        row_lengths = cache.row_lengths() if cache is not None and seq == 1 else None
        if row_lengths is not None:
            out = decode_attention_by_row(q.reshape(batch, kv_heads, heads // kv_heads, self.head_dim), k, v, row_lengths)
            return self.o_proj(out.reshape(batch, 1, -1))
        out = F.scaled_dot_product_attention(
            q.reshape(batch, kv_heads, heads // kv_heads, self.head_dim) if grouped
            else q.transpose(1, 2),  # [batch, heads, seq, head_dim]
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=heads != kv_heads and not grouped,
        )
        out = out.reshape(batch, 1, -1) if grouped else out.transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out)


def decode_attention_by_row(q: Tensor, k: Tensor, v: Tensor, lengths: list[int]) -> Tensor:
    """One-token attention, each row over its own first ``lengths[b]`` slots (0: zeros).

    q ``[batch, kv_heads, group, head_dim]`` (the query heads of a key/value head as its
    rows), k/v ``[batch, kv_heads, slots, head_dim]`` -> ``[batch, kv_heads, group, head_dim]``.
    """
    out = torch.zeros_like(q)
    for row, length in enumerate(lengths):
        if length:  # 4-D slices: CPU's flash kernel takes only those (3-D goes to the slow math path)
            rows = slice(row, row + 1)
            out[rows] = F.scaled_dot_product_attention(q[rows], k[rows, :, :length], v[rows, :, :length])
    return out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bias = cfg.add_bias_linear
        self.activation = cfg.activation
        self.gate_proj = (
            nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=bias) if cfg.activation == "swiglu" else None
        )
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=bias)
        self.down_proj = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is not None:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "gelu_tanh":
            h = F.gelu(self.up_proj(x), approximate="tanh")
        else:
            h = F.gelu(self.up_proj(x))
        return self.down_proj(h)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = build_norm(cfg)
        self.attention = Attention(cfg, layer_id)
        self.attention_adapter: nn.Module = nn.Identity()
        self.mlp_norm = build_norm(cfg)
        self.mlp = MLP(cfg)
        self.mlp_adapter: nn.Module = nn.Identity()
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        x: Tensor,
        rope: Rope | None,
        mask: Tensor | None,
        cache: KVCache | None = None,
        cache_pos: Tensor | None = None,
    ) -> Tensor:
        attn = self.attention(self.attention_norm(x), rope, mask, cache, cache_pos)
        h = x + self.dropout(self.attention_adapter(attn))
        return h + self.dropout(self.mlp_adapter(self.mlp(self.mlp_norm(h))))


class Transformer(nn.Module):
    """Decoder-only LM. Returns logits ``[batch, seq, padded_vocab]``.

    Pipeline stages are made by deleting parts: a stage without ``tok_embeddings``
    takes hidden states ``[batch, seq, hidden]`` as input, one without ``output``
    returns hidden states. ``layers`` is a ``ModuleDict`` keyed by the global layer
    index so parameter names stay the same on every stage.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        vocab = cfg.padded_vocab_size
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(vocab, cfg.hidden_size)
        self.pos_embeddings: nn.Embedding | None = (
            nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
            if cfg.position_embedding == "learned"
            else None
        )
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg, i) for i in range(cfg.num_layers)})
        self.norm: nn.Module | None = build_norm(cfg)
        self.output: nn.Linear | None = nn.Linear(cfg.hidden_size, vocab, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output weight with the embedding (again after ``to_empty``)."""
        if self.config.tie_word_embeddings and self.output is not None and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        cache_pos: Tensor | None = None,
    ) -> Tensor:
        """Run the (stage of the) model.

        tokens: ``[batch, seq]`` ids, or ``[batch, seq, hidden]`` on a stage without embeddings.
        positions: ``[batch, seq]`` or ``[1, seq]`` position ids; default ``cache_pos`` or ``arange``.
        mask: boolean ``[batch, 1, seq, kv_len]`` (True = attend); default causal.
        cache, cache_pos: KV cache and the slots ``[seq]`` this call writes.
        """
        seq = tokens.shape[1]
        if positions is None:
            positions = (cache_pos if cache_pos is not None else torch.arange(seq, device=tokens.device))[None]
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        if self.pos_embeddings is not None:
            h = h + self.pos_embeddings(positions)
        h = self.embedding_dropout(h)
        rope = (
            rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
            if self.config.position_embedding == "rope"
            else None
        )
        for layer in self.layers.values():
            h = layer(h, rope, mask, cache, cache_pos)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h


@contextmanager
def output_detached(model: Any) -> Iterator[nn.Module | None]:
    """Run ``model`` as a stage without its output layer (it returns hidden states) and
    yield that layer, so the caller projects only the slots it needs."""
    output = model.output
    if output is None:
        yield None
        return
    model.output = None
    try:
        yield output
    finally:
        model.output = output
