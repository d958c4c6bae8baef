"""Hugging Face ``gpt2`` / ``llama`` <-> our names: configs and state-dict key maps, both ways.

Pure data transforms, no file I/O (``megatron_detox.models.hf`` reads folders; export
writes them). Each family is one table of ``(our name, HF name, transpose)`` rows;
GPT-2's fused ``c_attn`` (q, k, v stacked on the output dimension of a Conv1D, which
stores weights ``[in, out]``) is the one special case.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import Activation, ModelConfig
from megatron_detox.models.state_dict import expected_shapes, pad_vocab, unpad_vocab

Getter = Callable[[str, tuple[int, ...]], Tensor]
"""``get(hf_name, expected_hf_shape)`` returns the HF tensor, or raises a UserError naming the file."""

Row = tuple[str, str, bool]  # (our name, HF name, transpose)

_GPT2_GELU: dict[str, Activation] = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_GELU_TO_GPT2 = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
"""Buffers some HF checkpoints carry (causal masks, RoPE tables); they hold no weights."""


def hf_model_type(cfg: ModelConfig) -> str:
    """The HF ``model_type`` that can express ``cfg``; a UserError if none can."""
    if (cfg.position_embedding, cfg.normalization, cfg.activation) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    if (cfg.position_embedding, cfg.normalization) == ("learned", "layernorm") and cfg.activation in _GELU_TO_GPT2:
        if cfg.add_bias_linear and cfg.kv_heads == cfg.num_attention_heads:
            return "gpt2"
    raise UserError(f"model {cfg.name!r} ({cfg.position_embedding} positions, {cfg.normalization}, "
                    f"{cfg.activation}) cannot be expressed as a Hugging Face gpt2 or llama model")


# ---------------------------------------------------------------- configs


def config_from_hf(hf: Mapping[str, Any], source: str, name: str = "custom") -> ModelConfig:
    """Our config for an HF ``config.json`` dict; ``source`` names the file in errors."""
    model_type = hf.get("model_type")

    def need(key: str) -> Any:
        if key not in hf:
            raise UserError(f"{source}: field {key!r} is missing (required for model_type {model_type!r})")
        return hf[key]

    def unsupported(key: str, value: object) -> UserError:
        return UserError(f"{source}: field {key!r} = {value!r} is not supported for model_type {model_type!r}")

    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in _GPT2_GELU:
            raise unsupported("activation_function", act)
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
            if hf.get(key, ok) != ok:
                raise unsupported(key, hf[key])
        cfg = ModelConfig(
            name=name, num_layers=need("n_layer"), hidden_size=need("n_embd"), num_attention_heads=need("n_head"),
            ffn_hidden_size=hf.get("n_inner"), vocab_size=need("vocab_size"),
            max_position_embeddings=need("n_positions"), position_embedding="learned",
            normalization="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_GPT2_GELU[act],
            add_bias_linear=True, tie_word_embeddings=hf.get("tie_word_embeddings", True),
            init_method_std=hf.get("initializer_range", 0.02),
            bos_token_id=_first(hf.get("bos_token_id")), eos_token_id=_first(hf.get("eos_token_id")),
        )
    elif model_type == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise unsupported("hidden_act", hf["hidden_act"])
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise unsupported("rope_parameters", rope)
        attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
        if attention_bias != mlp_bias:
            raise unsupported("attention_bias", attention_bias)  # our biases are all-or-nothing
        heads, hidden = need("num_attention_heads"), need("hidden_size")
        if hf.get("head_dim") not in (None, hidden // heads):
            raise unsupported("head_dim", hf["head_dim"])
        cfg = ModelConfig(
            name=name, num_layers=need("num_hidden_layers"), hidden_size=hidden, num_attention_heads=heads,
            num_query_groups=hf.get("num_key_value_heads") or heads, ffn_hidden_size=need("intermediate_size"),
            vocab_size=need("vocab_size"), max_position_embeddings=hf.get("max_position_embeddings", 2048),
            position_embedding="rope", rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            normalization="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), activation="swiglu",
            add_bias_linear=bool(attention_bias), tie_word_embeddings=hf.get("tie_word_embeddings", False),
            init_method_std=hf.get("initializer_range", 0.02),
            bos_token_id=_first(hf.get("bos_token_id")), eos_token_id=_first(hf.get("eos_token_id")),
        )
    else:
        raise UserError(f"{source}: model_type {model_type!r} is not supported (supported: gpt2, llama)")
    problems = cfg.validate()
    if problems:
        field, value, reason = problems[0]
        raise UserError(f"{source}: gives {field}={value!r}, which {reason}")
    return cfg


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF ``config.json`` dict for ``cfg`` (dropouts as configured; vocab unpadded)."""
    common = {"vocab_size": cfg.vocab_size, "initializer_range": cfg.init_method_std,
              "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
              "tie_word_embeddings": cfg.tie_word_embeddings}
    if hf_model_type(cfg) == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.num_layers,
                "n_embd": cfg.hidden_size, "n_head": cfg.num_attention_heads, "n_inner": cfg.ffn_hidden_size,
                "n_positions": cfg.max_position_embeddings, "activation_function": _GELU_TO_GPT2[cfg.activation],
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.hidden_dropout,
                "embd_pdrop": cfg.hidden_dropout, "attn_pdrop": cfg.attention_dropout, **common}
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.ffn_size, "hidden_act": "silu",
            "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
            # transformers < 5 reads rope_theta; >= 5 reads rope_parameters.
            "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.add_bias_linear, "mlp_bias": cfg.add_bias_linear,
            "attention_dropout": cfg.attention_dropout, **common}


def _first(value: Any) -> int | None:
    """HF allows a list of EOS ids; we keep the first."""
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


# ---------------------------------------------------------------- key maps


def key_map(cfg: ModelConfig) -> list[Row]:
    """Every (our name, HF name, transpose) row for ``cfg``, except GPT-2's fused q/k/v."""
    linear_leaves = ("weight", "bias") if cfg.add_bias_linear else ("weight",)
    norm_leaves = ("weight", "bias") if cfg.normalization == "layernorm" else ("weight",)
    if hf_model_type(cfg) == "gpt2":
        top = [("tok_embeddings.weight", "transformer.wte.weight", False),
               ("pos_embeddings.weight", "transformer.wpe.weight", False)]
        top += [(f"norm.{leaf}", f"transformer.ln_f.{leaf}", False) for leaf in norm_leaves]
        layer = "transformer.h.{i}."
        norms = [("attention_norm", "ln_1"), ("mlp_norm", "ln_2")]
        linears = [("attention.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")]
        conv1d = True  # GPT-2 Conv1D weights are [in, out]
    else:
        top = [("tok_embeddings.weight", "model.embed_tokens.weight", False), ("norm.weight", "model.norm.weight", False)]
        layer = "model.layers.{i}."
        norms = [("attention_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")]
        linears = [(f"attention.{p}", f"self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [(f"mlp.{p}", f"mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")]
        conv1d = False
    if not cfg.tie_word_embeddings:
        top.append(("output.weight", "lm_head.weight", False))
    rows = list(top)
    for i in range(cfg.num_layers):
        prefix = layer.format(i=i)
        for ours, theirs in norms:
            rows += [(f"layers.{i}.{ours}.{leaf}", f"{prefix}{theirs}.{leaf}", False) for leaf in norm_leaves]
        for ours, theirs in linears:
            rows += [(f"layers.{i}.{ours}.{leaf}", f"{prefix}{theirs}.{leaf}", conv1d and leaf == "weight")
                     for leaf in linear_leaves]
    return rows


def _fused_qkv(cfg: ModelConfig) -> list[tuple[int, str, str]]:
    """GPT-2 ``c_attn`` rows: (layer, leaf, HF name)."""
    if hf_model_type(cfg) != "gpt2":
        return []
    return [(i, leaf, f"transformer.h.{i}.attn.c_attn.{leaf}")
            for i in range(cfg.num_layers) for leaf in ("weight", "bias")]


def from_hf_state_dict(cfg: ModelConfig, get: Getter, names: Collection[str] | None = None) -> dict[str, Tensor]:
    """Our state dict (vocab padded, tied output shared) from HF tensors fetched by ``get``.

    ``names`` limits it to those tensors of ours (a converter reads one layer at a time).
    """
    shapes = {name: tuple(shape) for name, shape in expected_shapes(cfg).items()}
    for name in ("tok_embeddings.weight", "output.weight"):
        shapes[name] = (cfg.vocab_size, cfg.hidden_size)  # HF files hold the unpadded vocabulary
    state: dict[str, Tensor] = {}
    for ours, theirs, transpose in key_map(cfg):
        if names is not None and ours not in names:
            continue
        shape = shapes[ours]
        tensor = get(theirs, shape[::-1] if transpose else shape)
        state[ours] = tensor.t().contiguous() if transpose else tensor
    h = cfg.hidden_size
    for i, leaf, theirs in _fused_qkv(cfg):
        if names is not None and f"layers.{i}.attention.q_proj.{leaf}" not in names:
            continue
        fused = get(theirs, (h, 3 * h) if leaf == "weight" else (3 * h,))
        fused = fused.t() if leaf == "weight" else fused  # -> [3h, in]: q, k, v stacked on rows
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0), strict=True):
            state[f"layers.{i}.attention.{proj}.{leaf}"] = part.contiguous()
    if cfg.tie_word_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    return pad_vocab(cfg, state)


def to_hf_state_dict(cfg: ModelConfig, state: Mapping[str, Tensor],
                     partial: bool = False) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(hf_config_dict, hf_state_dict)`` for our ``state``: the inverse of the HF loader.

    Vocabulary padding is dropped; a tied output is left out (HF ties it on load).
    Every returned tensor owns its memory, so ``safetensors`` can save the dict.
    ``partial``: ``state`` holds some groups only (a converter writes one layer at a time).
    """
    hf: dict[str, Tensor] = {}
    for ours, theirs, transpose in key_map(cfg):
        if partial and ours not in state:
            continue
        tensor = state[ours]
        if ours in ("tok_embeddings.weight", "output.weight"):
            tensor = unpad_vocab(cfg, tensor)
        hf[theirs] = (tensor.t() if transpose else tensor).contiguous().clone()
    for i, leaf, theirs in _fused_qkv(cfg):
        if partial and f"layers.{i}.attention.q_proj.{leaf}" not in state:
            continue
        parts = [state[f"layers.{i}.attention.{proj}.{leaf}"] for proj in ("q_proj", "k_proj", "v_proj")]
        fused = torch.cat(parts, dim=0)
        hf[theirs] = fused.t().contiguous() if leaf == "weight" else fused
    return config_to_hf(cfg), hf
