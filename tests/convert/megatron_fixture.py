"""Megatron-LM checkpoints written by the tests themselves, and a reference forward pass.

Independent of the converter: the weights are drawn here in plain per-projection
form, packed into Megatron's per-version fused layouts and TP/PP shards by this
file's own code, and the reference logits are computed from the plain weights with
a forward pass written here (no import of the model or the converter).
"""

from __future__ import annotations

import argparse
import enum
import math
import random
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from megatron_detox.models.config import ModelConfig


@dataclass
class Arch:
    layers: int = 4
    hidden: int = 32
    heads: int = 4
    groups: int = 4
    ffn: int = 48
    vocab: int = 300
    positions: int = 32
    llama: bool = False  # RoPE + RMSNorm + SwiGLU + no biases + untied output
    theta: float = 10000.0
    eps: float = 1e-5

    @property
    def hd(self) -> int:
        return self.hidden // self.heads


GPT = Arch()
LLAMA = Arch(groups=2, llama=True, eps=1e-6)


def random_weights(arch: Arch, seed: int = 0) -> dict[str, Tensor]:
    """Plain weights: q/k/v and gate/up separate, vocabulary unpadded."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    h, hd = arch.hidden, arch.hd
    w = {"word": rand(arch.vocab, h, scale=1.0)}
    if not arch.llama:
        w["pos"] = rand(arch.positions, h, scale=0.5)
    else:
        w["out"] = rand(arch.vocab, h)
    w["final_w"] = 1 + rand(h)
    bias = not arch.llama
    if bias:
        w["final_b"] = rand(h)
    for i in range(arch.layers):
        p = f"{i}."
        w[p + "ln1_w"], w[p + "ln2_w"] = 1 + rand(h), 1 + rand(h)
        shapes = {"q": (arch.heads * hd, h), "k": (arch.groups * hd, h), "v": (arch.groups * hd, h),
                  "proj": (h, arch.heads * hd), "up": (arch.ffn, h), "fc2": (h, arch.ffn)}
        if arch.llama:
            shapes["gate"] = (arch.ffn, h)
        for name, shape in shapes.items():
            w[p + name + "_w"] = rand(*shape, scale=1 / math.sqrt(shape[1]))
            if bias:
                w[p + name + "_b"] = rand(shape[0])
        if bias:
            w[p + "ln1_b"], w[p + "ln2_b"] = rand(h), rand(h)
    return w


def reference_logits(arch: Arch, w: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Logits ``[batch, seq, vocab]`` computed straight from the plain weights, float64."""
    w = {k: v.double() for k, v in w.items()}
    b, s = tokens.shape

    def norm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if arch.llama:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + arch.eps) * weight
        return F.layer_norm(x, (arch.hidden,), weight, bias, arch.eps)

    def lin(x: Tensor, name: str) -> Tensor:
        out = x @ w[name + "_w"].T
        return out + w[name + "_b"] if name + "_b" in w else out

    def rope(x: Tensor) -> Tensor:  # x [b, s, heads, hd], rotate-half
        half = arch.hd // 2
        inv = 1.0 / arch.theta ** (torch.arange(half, dtype=torch.float64) * 2 / arch.hd)
        ang = torch.arange(s, dtype=torch.float64)[:, None] * inv  # [s, half]
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    x = w["word"][tokens]
    if not arch.llama:
        x = x + w["pos"][:s]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for i in range(arch.layers):
        p = f"{i}."
        hin = norm(x, w[p + "ln1_w"], w.get(p + "ln1_b"))
        q = lin(hin, p + "q").view(b, s, arch.heads, arch.hd)
        k = lin(hin, p + "k").view(b, s, arch.groups, arch.hd)
        v = lin(hin, p + "v").view(b, s, arch.groups, arch.hd)
        if arch.llama:
            q, k = rope(q), rope(k)
        rep = arch.heads // arch.groups
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(arch.hd)
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, -1)
        x = x + lin(o, p + "proj")
        h2 = norm(x, w[p + "ln2_w"], w.get(p + "ln2_b"))
        inner = F.silu(lin(h2, p + "gate")) * lin(h2, p + "up") if arch.llama else F.gelu(lin(h2, p + "up"))
        x = x + lin(inner, p + "fc2")
    x = norm(x, w["final_w"], w.get("final_b"))
    return x @ (w["out"] if arch.llama else w["word"]).T


# ------------------------------------------------------------------ Megatron packing


def _fused_qkv(arch: Arch, w: dict[str, Tensor], i: int, leaf: str, tp: int, rank: int, version: float) -> Tensor:
    hd, nh, ng = arch.hd, arch.heads // tp, arch.groups // tp
    q = w[f"{i}.q_{leaf}"].reshape(arch.heads, hd, -1)[rank * nh:(rank + 1) * nh]
    k = w[f"{i}.k_{leaf}"].reshape(arch.groups, hd, -1)[rank * ng:(rank + 1) * ng]
    v = w[f"{i}.v_{leaf}"].reshape(arch.groups, hd, -1)[rank * ng:(rank + 1) * ng]
    if version == 0:  # [3, heads, head_dim]
        fused = torch.cat([q, k, v])
    elif version == 1.0:  # [heads, head_dim, 3]
        fused = torch.stack([q, k, v], dim=2)
    else:  # [groups, heads_per_group + 2, head_dim]
        fused = torch.cat([q.reshape(ng, nh // ng, hd, -1), k[:, None], v[:, None]], dim=1)
    out = fused.reshape(-1, q.shape[-1])
    return out[:, 0] if leaf == "b" else out


def _padded(arch: Arch, tp: int) -> int:
    return -(-arch.vocab // (128 * tp)) * 128 * tp


def _vocab_shard(arch: Arch, weight: Tensor, tp: int, rank: int) -> Tensor:
    rows = _padded(arch, tp)
    full = torch.cat([weight, weight.new_zeros(rows - weight.shape[0], weight.shape[1])])
    return full.chunk(tp)[rank].clone()


def layer_tensors(arch: Arch, w: dict[str, Tensor], i: int, tp: int, r: int, version: float) -> dict[str, Tensor]:
    """Layer ``i``'s tensors on TP rank ``r``, by Megatron-Core module name."""
    out: dict[str, Tensor] = {}
    leaves = ("w",) if arch.llama else ("w", "b")
    names = {"w": "weight", "b": "bias"}
    for leaf in leaves:
        out[f"input_layernorm.{names[leaf]}"] = w[f"{i}.ln1_{leaf}"].clone()
        out[f"pre_mlp_layernorm.{names[leaf]}"] = w[f"{i}.ln2_{leaf}"].clone()
        out[f"self_attention.linear_qkv.{names[leaf]}"] = _fused_qkv(arch, w, i, leaf, tp, r, version).clone()
        fc1 = w[f"{i}.up_{leaf}"].chunk(tp)[r]
        if arch.llama:
            fc1 = torch.cat([w[f"{i}.gate_{leaf}"].chunk(tp)[r], fc1])
        out[f"mlp.linear_fc1.{names[leaf]}"] = fc1.clone()
        proj, fc2 = w[f"{i}.proj_{leaf}"], w[f"{i}.fc2_{leaf}"]
        out[f"self_attention.linear_proj.{names[leaf]}"] = (proj.chunk(tp, dim=1)[r] if leaf == "w" else proj).clone()
        out[f"mlp.linear_fc2.{names[leaf]}"] = (fc2.chunk(tp, dim=1)[r] if leaf == "w" else fc2).clone()
    return out


_LEGACY = {"input_layernorm": "input_layernorm", "pre_mlp_layernorm": "post_attention_layernorm",
           "self_attention.linear_qkv": "self_attention.query_key_value",
           "self_attention.linear_proj": "self_attention.dense",
           "mlp.linear_fc1": "mlp.dense_h_to_4h", "mlp.linear_fc2": "mlp.dense_4h_to_h"}


def _legacy_name(name: str, version: float) -> str:
    module, leaf = name.rsplit(".", 1)
    legacy = _LEGACY[module]
    if version == 0:
        legacy = legacy.replace("self_attention.", "attention.")
    elif version == 1.0:  # the later "norm" spellings
        legacy = legacy.replace("input_layernorm", "input_norm").replace("post_attention_layernorm",
                                                                           "post_attention_norm")
    return f"{legacy}.{leaf}"


def _te_name(name: str) -> str:
    for norm, module in (("input_layernorm", "self_attention.linear_qkv"), ("pre_mlp_layernorm", "mlp.linear_fc1")):
        if name.startswith(norm + "."):
            return f"{module}.layer_norm_{name.rpartition('.')[2]}"
    return name


def stage_model(arch: Arch, w: dict[str, Tensor], tp: int, pp: int, t: int, p: int, version: float,
                scheme: str) -> dict:
    """The ``model`` entry of shard (t, p) in scheme ``legacy``, ``mcore`` or ``te``."""
    per = arch.layers // pp
    first, last = p == 0, p == pp - 1
    layers: dict[str, Tensor] = {}
    for j in range(per):
        for name, tensor in layer_tensors(arch, w, p * per + j, tp, t, version).items():
            if scheme == "legacy":
                layers[f"layers.{j}.{_legacy_name(name, version)}"] = tensor
            else:
                layers[f"decoder.layers.{j}.{_te_name(name) if scheme == 'te' else name}"] = tensor
                if scheme == "te":
                    layers[f"decoder.layers.{j}.self_attention.core_attention._extra_state"] = torch.zeros(3)
    leaves = (("w", "weight"),) if arch.llama else (("w", "weight"), ("b", "bias"))
    if scheme == "legacy":
        encoder = dict(layers)
        if last:
            final = "final_norm" if version == 1.0 else "final_layernorm"
            encoder.update({f"{final}.{leaf}": w[f"final_{ours}"].clone() for ours, leaf in leaves})
        lm: dict = {"transformer" if version == 0 else "encoder": encoder}
        if first:
            lm["embedding"] = {"word_embeddings": {"weight": _vocab_shard(arch, w["word"], tp, t)}}
            if "pos" in w:
                lm["embedding"]["position_embeddings"] = {"weight": w["pos"].clone()}
        model: dict = {"language_model": lm}
        if last and not first and not arch.llama:
            model["word_embeddings_for_head"] = {"weight": _vocab_shard(arch, w["word"], tp, t)}
        if last and arch.llama:
            lm["output_layer"] = {"weight": _vocab_shard(arch, w["out"], tp, t)}
        return model
    model = dict(layers)
    if first:
        model["embedding.word_embeddings.weight"] = _vocab_shard(arch, w["word"], tp, t)
        if "pos" in w:
            model["embedding.position_embeddings.weight"] = w["pos"].clone()
    if last:
        model.update({f"decoder.final_layernorm.{leaf}": w[f"final_{ours}"].clone() for ours, leaf in leaves})
        if arch.llama:
            model["output_layer.weight"] = _vocab_shard(arch, w["out"], tp, t)
        elif not first:
            model["output_layer.weight"] = _vocab_shard(arch, w["word"], tp, t)
    return model


class ModelType(enum.Enum):  # saved under Megatron-Core's name, as Megatron-LM stores it in args
    encoder_or_decoder = 1


def megatron_args(arch: Arch, tp: int, pp: int, **extra: object) -> argparse.Namespace:
    llama = arch.llama
    return argparse.Namespace(
        num_layers=arch.layers, hidden_size=arch.hidden, ffn_hidden_size=arch.ffn, num_attention_heads=arch.heads,
        kv_channels=arch.hd, group_query_attention=arch.groups != arch.heads, num_query_groups=arch.groups,
        max_position_embeddings=arch.positions, position_embedding_type="rope" if llama else "learned_absolute",
        rotary_base=arch.theta, rotary_percent=1.0, normalization="RMSNorm" if llama else "LayerNorm",
        norm_epsilon=arch.eps, swiglu=llama, add_bias_linear=not llama,
        untie_embeddings_and_output_weights=llama, padded_vocab_size=_padded(arch, tp),
        make_vocab_size_divisible_by=128, vocab_size=arch.vocab, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, params_dtype=torch.float32, model_type=ModelType.encoder_or_decoder,
        **extra)


def write_megatron(root: Path, arch: Arch, w: dict[str, Tensor], tp: int, pp: int, version: float, scheme: str,
                   iteration: int | str = 1000, edit: Callable[[int, int, dict], None] | None = None) -> Path:
    """A Megatron-LM torch-format checkpoint folder as Megatron-LM's ``save_checkpoint`` lays it out.

    ``edit(t, p, shard_dict)`` may change a shard before it is saved (to damage it).
    """
    folder = root / ("release" if iteration == "release" else f"iter_{iteration:07d}")
    fake = {name: types.ModuleType(name) for name in ("megatron", "megatron.core", "megatron.core.enums")}
    fake["megatron.core.enums"].ModelType = ModelType  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelType, "__module__", "megatron.core.enums")
        for name, module in fake.items():
            patch.setitem(sys.modules, name, module)
        for p in range(pp):
            for t in range(tp):
                shard = folder / (f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}")
                shard.mkdir(parents=True)
                obj = {
                    "args": megatron_args(arch, tp, pp), "checkpoint_version": version, "iteration": iteration,
                    "model": stage_model(arch, w, tp, pp, t, p, version, scheme),
                    "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                                   "torch_rng_state": torch.get_rng_state()}],
                }
                if edit is not None:
                    edit(t, p, obj)
                torch.save(obj, shard / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return root


def ours_checkpoint(out: Path, cfg: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    """A checkpoint of ours holding a random ``cfg`` model (norms perturbed); returns its state dict."""
    from megatron_detox.convert.formats import DcpSink
    from megatron_detox.convert.groups import tensor_groups
    from megatron_detox.models import build_model

    state = build_model(cfg, seed=seed).state_dict()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in state.items():
            if "norm" in name or name.endswith("bias"):  # so a swapped norm or bias would show
                tensor.add_(torch.randn(tensor.shape, generator=g) * 0.1)
            if name in ("tok_embeddings.weight", "output.weight"):
                tensor[cfg.vocab_size:] = 0
    sink = DcpSink(out, cfg, 1, 1)
    for _, names in tensor_groups(cfg):
        sink.write({name: state[name] for name in names})
    sink.finish()
    return state
