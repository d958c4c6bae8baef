"""Megatron-LM ``args`` (an ``argparse.Namespace`` saved in every shard) <-> our ModelConfig.

Field names and defaults follow ``megatron/training/arguments.py``; older releases
spelled some differently (``layernorm_epsilon``, no ``position_embedding_type``), and
those spellings are read too.
"""

from __future__ import annotations

import argparse
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig

GPT2_BPE_VOCAB = 50257  # GPT2BPETokenizer's vocabulary; Megatron does not store it in args


def _get(args: Any, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def args_vocab_size(args: Any) -> int | None:
    """The true vocabulary size when ``args`` tell it (``--vocab-size``, or the GPT-2 BPE tokenizer)."""
    if _get(args, "vocab_size"):
        return int(args.vocab_size)
    return GPT2_BPE_VOCAB if _get(args, "tokenizer_type") == "GPT2BPETokenizer" else None


def config_from_args(args: Any, source: str, vocab_size: int | None = None) -> ModelConfig:
    """Our config for a Megatron ``args``; ``vocab_size`` is the true (unpadded) vocabulary if known."""
    if not isinstance(args, argparse.Namespace):
        raise UserError(f"{source}: 'args' is missing or not a Namespace; cannot tell the architecture "
                        "(Megatron-LM saves it unless --no-save-args was given)")

    def need(name: str) -> Any:
        value = getattr(args, name, None)
        if value is None:
            raise UserError(f"{source}: args.{name} is missing")
        return value

    def unsupported(name: str, value: object) -> UserError:
        return UserError(f"{source}: args.{name}={value!r} is not supported by the converter")

    for name in ("apply_residual_connection_post_layernorm", "rotary_interleaved", "qk_layernorm", "squared_relu",
                 "num_experts", "multi_latent_attention"):
        if getattr(args, name, None):  # each is off (False/None) in every model we can express
            raise unsupported(name, getattr(args, name))
    if float(_get(args, "rotary_percent", 1.0)) != 1.0:
        raise unsupported("rotary_percent", args.rotary_percent)
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    if _get(args, "kv_channels", hidden // heads) != hidden // heads:
        raise unsupported("kv_channels", args.kv_channels)
    position = _get(args, "position_embedding_type", "rope" if _get(args, "use_rotary_position_embeddings", False)
                    else "learned_absolute")
    if position not in ("learned_absolute", "rope"):
        raise unsupported("position_embedding_type", position)
    normalization = _get(args, "normalization", "LayerNorm")
    if normalization not in ("LayerNorm", "RMSNorm"):
        raise unsupported("normalization", normalization)
    bias = bool(_get(args, "add_bias_linear", True))
    if bool(_get(args, "add_qkv_bias", bias)) != bias:
        raise unsupported("add_qkv_bias", args.add_qkv_bias)
    padded = int(need("padded_vocab_size"))
    if vocab_size is None:
        vocab_size = args_vocab_size(args) or padded
    groups = int(_get(args, "num_query_groups", heads)) if _get(args, "group_query_attention", False) else None
    cfg = ModelConfig(
        name="megatron",
        num_layers=int(need("num_layers")), hidden_size=hidden, num_attention_heads=heads,
        num_query_groups=groups, ffn_hidden_size=int(_get(args, "ffn_hidden_size", 4 * hidden)),
        vocab_size=int(vocab_size), make_vocab_size_divisible_by=int(_get(args, "make_vocab_size_divisible_by", 128)),
        max_position_embeddings=int(need("max_position_embeddings")),
        position_embedding="rope" if position == "rope" else "learned",
        rope_theta=float(_get(args, "rotary_base", 10000)),
        normalization="rmsnorm" if normalization == "RMSNorm" else "layernorm",
        norm_eps=float(_get(args, "norm_epsilon", _get(args, "layernorm_epsilon", 1e-5))),
        activation="swiglu" if _get(args, "swiglu", False) else ("gelu_tanh" if _get(args, "openai_gelu", False)
                                                                 else "gelu"),
        add_bias_linear=bias,
        tie_word_embeddings=not _get(args, "untie_embeddings_and_output_weights", False),
        init_method_std=float(_get(args, "init_method_std", 0.02)),
    )
    problems = cfg.validate()
    if problems:
        field, value, reason = problems[0]
        raise UserError(f"{source}: args give {field}={value!r}, which {reason}")
    return cfg


def args_from_config(cfg: ModelConfig, tp: int, pp: int, padded_vocab: int, dtype: str) -> argparse.Namespace:
    """The ``args`` Megatron-LM reads back (``load_args_from_checkpoint``, ``check_checkpoint_args``)."""
    return argparse.Namespace(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.ffn_size,
        num_attention_heads=cfg.num_attention_heads, kv_channels=cfg.head_dim,
        group_query_attention=cfg.kv_heads != cfg.num_attention_heads, num_query_groups=cfg.kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, seq_length=cfg.max_position_embeddings,
        position_embedding_type="rope" if cfg.position_embedding == "rope" else "learned_absolute",
        add_position_embedding=cfg.position_embedding == "learned", use_rotary_position_embeddings=
        cfg.position_embedding == "rope", rotary_base=int(cfg.rope_theta) if cfg.rope_theta.is_integer()
        else cfg.rope_theta, rotary_percent=1.0, rotary_interleaved=False,
        normalization="RMSNorm" if cfg.normalization == "rmsnorm" else "LayerNorm",
        norm_epsilon=cfg.norm_eps, layernorm_epsilon=cfg.norm_eps,
        swiglu=cfg.activation == "swiglu", openai_gelu=cfg.activation == "gelu_tanh",
        add_bias_linear=cfg.add_bias_linear, add_qkv_bias=cfg.add_bias_linear,
        untie_embeddings_and_output_weights=not cfg.tie_word_embeddings,
        apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=False,
        vocab_size=cfg.vocab_size, padded_vocab_size=padded_vocab,
        make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None, num_experts=None,
        init_method_std=cfg.init_method_std, hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout, bf16=dtype == "bf16", fp16=dtype == "fp16",
        use_mcore_models=True, use_legacy_models=False, transformer_impl="local", ckpt_format="torch",
        iteration=0, consumed_train_samples=0, consumed_valid_samples=0,
    )
