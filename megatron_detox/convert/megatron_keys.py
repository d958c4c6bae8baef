"""Megatron-LM parameter names and tensor layouts <-> ours; pure tensor transforms, no I/O.

A Megatron key is parsed into a *part*: ``("word", leaf)``, ``("pos", leaf)``,
``("final_norm", leaf)``, ``("output", leaf)``, ``("head_copy", leaf)`` (the tied output
copy a last pipeline stage holds) or ``("layer", local_index, part, leaf)`` with part one
of ``norm1 qkv proj norm2 fc1 fc2``. Both key schemes parse to the same parts:

=====================  ==================================================  ====================================
part                   legacy (``megatron/model``, ``megatron/legacy``)    Megatron-Core (``GPTModel``)
=====================  ==================================================  ====================================
word                   language_model.embedding.word_embeddings            embedding.word_embeddings
pos                    language_model.embedding.position_embeddings        embedding.position_embeddings
norm1                  ...layers.N.input_layernorm (input_norm)            decoder.layers.N.input_layernorm
                                                                           (TE: self_attention.linear_qkv.layer_norm_*)
qkv                    ...layers.N.self_attention.query_key_value          decoder.layers.N.self_attention.linear_qkv
proj                   ...layers.N.self_attention.dense                    decoder.layers.N.self_attention.linear_proj
norm2                  ...layers.N.post_attention_layernorm (_norm)        decoder.layers.N.pre_mlp_layernorm
                                                                           (TE: mlp.linear_fc1.layer_norm_*)
fc1                    ...layers.N.mlp.dense_h_to_4h                       decoder.layers.N.mlp.linear_fc1
fc2                    ...layers.N.mlp.dense_4h_to_h                       decoder.layers.N.mlp.linear_fc2
final_norm             language_model.encoder.final_layernorm (final_norm) decoder.final_layernorm
output                 language_model.output_layer                         output_layer
head_copy              word_embeddings_for_head                            output_layer (tied, last stage)
=====================  ==================================================  ====================================

``...`` is ``language_model.encoder`` (``language_model.transformer`` before 2021;
``attention`` for ``self_attention`` in checkpoint version 0). Layer indexes are local
to a pipeline stage in both schemes.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor

from megatron_detox.models.config import ModelConfig

Part = tuple  # ("word", leaf) | ... | ("layer", local_index, part, leaf)
Scheme = Literal["legacy", "mcore"]
KNOWN_VERSIONS = (0, 1.0, 2.0, 3.0)

_LEGACY_LAYER = {
    "input_layernorm": "norm1", "input_norm": "norm1",
    "self_attention.query_key_value": "qkv", "attention.query_key_value": "qkv",
    "self_attention.dense": "proj", "attention.dense": "proj",
    "post_attention_layernorm": "norm2", "post_attention_norm": "norm2",
    "mlp.dense_h_to_4h": "fc1", "mlp.dense_4h_to_h": "fc2",
}
_MCORE_LAYER = {
    "input_layernorm": "norm1", "self_attention.linear_qkv": "qkv", "self_attention.linear_proj": "proj",
    "pre_mlp_layernorm": "norm2", "mlp.linear_fc1": "fc1", "mlp.linear_fc2": "fc2",
}
_TE_FOLDED = {"self_attention.linear_qkv": "norm1", "mlp.linear_fc1": "norm2"}
_MCORE_NAMES = {v: k for k, v in _MCORE_LAYER.items()}
_LEAF = r"(weight|bias)"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^language_model\.embedding\.word_embeddings\.{_LEAF}$"), "word"),
    (re.compile(rf"^language_model\.embedding\.position_embeddings\.{_LEAF}$"), "pos"),
    (re.compile(rf"^language_model\.(?:encoder|transformer)\.(?:final_layernorm|final_norm)\.{_LEAF}$"), "final_norm"),
    (re.compile(rf"^language_model\.output_layer\.{_LEAF}$"), "output"),
    (re.compile(rf"^word_embeddings_for_head\.{_LEAF}$"), "head_copy"),
    (re.compile(rf"^embedding\.word_embeddings\.{_LEAF}$"), "word"),
    (re.compile(rf"^embedding\.position_embeddings\.{_LEAF}$"), "pos"),
    (re.compile(rf"^decoder\.(?:final_layernorm|final_norm)\.{_LEAF}$"), "final_norm"),
    (re.compile(rf"^output_layer\.{_LEAF}$"), "output"),
]
_LEGACY_LAYER_RE = re.compile(r"^language_model\.(?:encoder|transformer)\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_MCORE_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)\.(weight|bias|layer_norm_weight|layer_norm_bias)$")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Legacy checkpoints nest dicts (``language_model`` -> ``encoder`` -> keys); join with dots."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def is_ignored(key: str) -> bool:
    """Entries that hold no weights: Transformer Engine's FP8 ``_extra_state``, RoPE tables."""
    return key.endswith(("_extra_state", "inv_freq"))


def parse_key(key: str) -> tuple[Scheme, Part] | None:
    """``(scheme, part)`` for a Megatron key, None if it is not one we know."""
    for pattern, part in _PATTERNS:
        found = pattern.match(key)
        if found:
            return ("legacy" if key.startswith(("language_model.", "word_embeddings_for_head")) else "mcore",
                    (part, found.group(1)))
    found = _LEGACY_LAYER_RE.match(key)
    if found and found.group(2) in _LEGACY_LAYER:
        return "legacy", ("layer", int(found.group(1)), _LEGACY_LAYER[found.group(2)], found.group(3))
    found = _MCORE_LAYER_RE.match(key)
    if found:
        index, module, leaf = int(found.group(1)), found.group(2), found.group(3)
        if leaf.startswith("layer_norm_") and module in _TE_FOLDED:
            return "mcore", ("layer", index, _TE_FOLDED[module], leaf.removeprefix("layer_norm_"))
        if module in _MCORE_LAYER and not leaf.startswith("layer_norm_"):
            return "mcore", ("layer", index, _MCORE_LAYER[module], leaf)
    return None


def mcore_key(part: Part, te: bool = False) -> str:
    """The Megatron-Core key of ``part``: the scheme we write (``te``: norms folded as in TE layers)."""
    if part[0] == "layer":
        _, index, name, leaf = part
        if te and name in ("norm1", "norm2"):
            module = "self_attention.linear_qkv" if name == "norm1" else "mlp.linear_fc1"
            return f"decoder.layers.{index}.{module}.layer_norm_{leaf}"
        return f"decoder.layers.{index}.{_MCORE_NAMES[name]}.{leaf}"
    return {"word": "embedding.word_embeddings", "pos": "embedding.position_embeddings",
            "final_norm": "decoder.final_layernorm", "output": "output_layer",
            "head_copy": "output_layer"}[part[0]] + f".{part[1]}"


# ------------------------------------------------------------------ vocabulary


def megatron_padded_vocab(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's ``_vocab_size_with_padding``: up to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def repad_rows(weight: Tensor, vocab_size: int, rows: int) -> Tensor:
    """The first ``vocab_size`` rows of ``weight``, zero-padded to ``rows``."""
    kept = weight[:vocab_size]
    extra = rows - kept.shape[0]
    return torch.cat([kept, kept.new_zeros(extra, *kept.shape[1:])]) if extra else kept


# ------------------------------------------------------------------ fused QKV


def unfuse_qkv(local: Tensor, cfg: ModelConfig, tp: int, version: float) -> tuple[Tensor, Tensor, Tensor]:
    """One TP rank's fused QKV weight ``[rows, hidden]`` (or bias ``[rows]``) -> its q, k, v rows.

    Row order by checkpoint version: 0: ``[3, heads, head_dim]``; 1.0: ``[heads, head_dim, 3]``;
    2.0 / 3.0 and Megatron-Core: ``[groups, heads_per_group + 2, head_dim]`` (q heads of a
    group, then its k, then its v; with one group per head this is ``[heads, 3, head_dim]``).
    """
    rest = local.shape[1:]
    hd, heads = cfg.head_dim, cfg.num_attention_heads // tp
    if version == 0:
        q, k, v = local.reshape(3, heads * hd, *rest).unbind(0)
        return q, k, v
    if version == 1.0:
        w = local.reshape(heads, hd, 3, *rest)
        q, k, v = (w.select(2, i).reshape(heads * hd, *rest) for i in range(3))
        return q, k, v
    groups = cfg.kv_heads // tp
    per_group = heads // groups
    w = local.reshape(groups, per_group + 2, hd, *rest)
    q = w[:, :per_group].reshape(heads * hd, *rest)
    return q, w[:, per_group].reshape(groups * hd, *rest), w[:, per_group + 1].reshape(groups * hd, *rest)


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, cfg: ModelConfig) -> Tensor:
    """Inverse of :func:`unfuse_qkv` for versions >= 2.0, on one rank's q, k, v rows."""
    hd = cfg.head_dim
    rest = q.shape[1:]
    groups = k.shape[0] // hd
    q = q.reshape(groups, -1, hd, *rest)
    fused = torch.cat([q, k.reshape(groups, 1, hd, *rest), v.reshape(groups, 1, hd, *rest)], dim=1)
    return fused.reshape(-1, *rest)


# ------------------------------------------------------------------ one layer, all TP ranks

_LINEAR_OURS = {"proj": "attention.o_proj", "fc2": "mlp.down_proj"}
_NORM_OURS = {"norm1": "attention_norm", "norm2": "mlp_norm"}


def layer_parts(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Every (part, leaf) one layer holds for ``cfg``."""
    linear = ("weight", "bias") if cfg.add_bias_linear else ("weight",)
    norm = ("weight", "bias") if cfg.normalization == "layernorm" else ("weight",)
    return ([(p, leaf) for p in ("norm1", "norm2") for leaf in norm]
            + [(p, leaf) for p in ("qkv", "proj", "fc1", "fc2") for leaf in linear])


def merge_layer(shards: dict[tuple[str, str], list[Tensor]], cfg: ModelConfig, i: int,
                version: float) -> dict[str, Tensor]:
    """Our tensors of layer ``i`` from every TP rank's (part, leaf) tensors."""
    tp = len(next(iter(shards.values())))
    ours: dict[str, Tensor] = {}
    for (part, leaf), tensors in shards.items():
        if part in _NORM_OURS:
            ours[f"layers.{i}.{_NORM_OURS[part]}.{leaf}"] = tensors[0]  # replicated
        elif part in _LINEAR_OURS:
            # Row-parallel: weights split on the input dimension, the bias replicated.
            ours[f"layers.{i}.{_LINEAR_OURS[part]}.{leaf}"] = (
                torch.cat(tensors, dim=1) if leaf == "weight" else tensors[0])
        elif part == "qkv":
            pieces = [unfuse_qkv(t, cfg, tp, version) for t in tensors]
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                ours[f"layers.{i}.attention.{proj}.{leaf}"] = torch.cat([p[j] for p in pieces])
        elif part == "fc1":  # column-parallel; with SwiGLU each rank holds [gate_r; up_r]
            if cfg.activation == "swiglu":
                halves = [t.chunk(2, dim=0) for t in tensors]
                ours[f"layers.{i}.mlp.gate_proj.{leaf}"] = torch.cat([h[0] for h in halves])
                ours[f"layers.{i}.mlp.up_proj.{leaf}"] = torch.cat([h[1] for h in halves])
            else:
                ours[f"layers.{i}.mlp.up_proj.{leaf}"] = torch.cat(tensors)
    return ours


def split_layer(ours: dict[str, Tensor], cfg: ModelConfig, i: int, tp: int) -> list[dict[tuple[str, str], Tensor]]:
    """Per TP rank, the (part, leaf) tensors of layer ``i`` (inverse of :func:`merge_layer`, version 3.0)."""
    ranks: list[dict[tuple[str, str], Tensor]] = [{} for _ in range(tp)]
    for part, leaf in layer_parts(cfg):
        if part in _NORM_OURS:
            pieces = [ours[f"layers.{i}.{_NORM_OURS[part]}.{leaf}"]] * tp
        elif part in _LINEAR_OURS:
            full = ours[f"layers.{i}.{_LINEAR_OURS[part]}.{leaf}"]
            pieces = list(full.chunk(tp, dim=1)) if leaf == "weight" else [full] * tp
        elif part == "qkv":
            q, k, v = (ours[f"layers.{i}.attention.{p}.{leaf}"].chunk(tp) for p in ("q_proj", "k_proj", "v_proj"))
            pieces = [fuse_qkv(q[r], k[r], v[r], cfg) for r in range(tp)]
        else:  # fc1
            up = ours[f"layers.{i}.mlp.up_proj.{leaf}"].chunk(tp)
            if cfg.activation == "swiglu":
                gate = ours[f"layers.{i}.mlp.gate_proj.{leaf}"].chunk(tp)
                pieces = [torch.cat([gate[r], up[r]]) for r in range(tp)]
            else:
                pieces = list(up)
        for r in range(tp):
            ranks[r][(part, leaf)] = pieces[r].contiguous().clone()
    return ranks
