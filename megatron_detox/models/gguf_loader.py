"""Read a llama-architecture GGUF file into a ModelConfig and an fp32 state dict.

Every tensor is dequantized with ``gguf.quants.dequantize``. llama.cpp's converter
permutes the rows of ``attn_q``/``attn_k`` (interleaved-pair RoPE layout); we undo
that to get back the Hugging Face rotate-half layout our model uses, exactly as
``transformers``' GGUF loader does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.state_dict import check_state_dict, pad_vocab

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF per-layer tensor name -> ours (``blk.N.<key>.weight`` -> ``layers.N.<value>.weight``).
_LAYER_KEYS = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.q_proj",
    "attn_k": "attention.k_proj",
    "attn_v": "attention.v_proj",
    "attn_output": "attention.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_KEYS = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}


def load_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Return ``(config, state_dict)`` in our parameter names, fp32, vocab rows padded."""
    path = Path(path)
    reader, cfg = open_gguf(path)
    state = dict(read_gguf_tensor(tensor, cfg, path) for tensor in reader.tensors)
    if cfg.tie_word_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    state = pad_vocab(cfg, state)
    check_state_dict(cfg, state, str(path))
    return cfg, state


def open_gguf(path: Path) -> tuple[Any, ModelConfig]:
    """``(gguf.GGUFReader, config)``; the reader's tensors are memory-mapped, nothing dequantized yet."""
    reader = _open(path)
    return reader, _config(reader, path)


def read_gguf_tensor(tensor: Any, cfg: ModelConfig, path: Path) -> tuple[str, Tensor]:
    """``(our name, fp32 tensor)`` of one ``GGUFReader`` tensor (vocab unpadded, RoPE rows restored)."""
    name = gguf_to_our_name(tensor.name, path)
    values = torch.from_numpy(_dequantize(tensor, path))
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = cfg.num_attention_heads if "q_proj" in name else cfg.kv_heads
        values = unpermute_rope_rows(values, heads)
    return name, values


def unpermute_rope_rows(weight: Tensor, num_heads: int) -> Tensor:
    """Undo llama.cpp's Q/K row order ([heads, 2, head_dim/2] -> [heads, head_dim/2, 2] swap)."""
    rows = weight.shape[0]
    w = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape).contiguous()


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UserError(f"{path}: not a GGUF file (bad magic bytes)")
    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damage
        raise UserError(f"{path}: cannot read GGUF ({type(exc).__name__}: {exc}); "
                        "the file is truncated or damaged, download it again") from None


def _field(reader: Any, key: str, path: Path, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise UserError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def _config(reader: Any, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    scaling = _field(reader, f"{arch}.rope.scaling.type", path, "none")
    if scaling not in ("none", "linear") or (
        scaling == "linear" and _field(reader, f"{arch}.rope.scaling.factor", path, 1.0) != 1.0
    ):
        raise UserError(f"{path}: RoPE scaling {scaling!r} is not supported")
    heads = int(_field(reader, f"{arch}.attention.head_count", path))
    hidden = int(_field(reader, f"{arch}.embedding_length", path))
    tensor_names = {t.name for t in reader.tensors}
    cfg = ModelConfig(
        name=str(_field(reader, "general.name", path, path.stem)),
        num_layers=int(_field(reader, f"{arch}.block_count", path)),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=int(_field(reader, f"{arch}.attention.head_count_kv", path, heads)),
        ffn_hidden_size=int(_field(reader, f"{arch}.feed_forward_length", path)),
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens", path)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", path)),
        position_embedding="rope",
        rope_theta=_float32(_field(reader, f"{arch}.rope.freq_base", path, 10000.0)),
        normalization="rmsnorm",
        norm_eps=_float32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        activation="swiglu",
        add_bias_linear=False,
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_optional_int(_field(reader, "tokenizer.ggml.bos_token_id", path, None)),
        eos_token_id=_optional_int(_field(reader, "tokenizer.ggml.eos_token_id", path, None)),
        tokenizer="gguf",
    )
    rope_dim = _field(reader, f"{arch}.rope.dimension_count", path, cfg.head_dim)
    if int(rope_dim) != cfg.head_dim:
        raise UserError(f"{path}: partial RoPE (rope.dimension_count={rope_dim}, "
                        f"head_dim={cfg.head_dim}) is not supported")
    problems = cfg.validate()
    if problems:
        field, value, reason = problems[0]
        raise UserError(f"{path}: GGUF metadata gives {field}={value!r}, which {reason}")
    return cfg


def _float32(value: Any) -> float:
    """The shortest decimal that rounds to this float32 (GGUF stores 1e-5 as 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def gguf_to_our_name(gguf_name: str, path: Path) -> str:
    stem, _, leaf = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_KEYS:
        return f"layers.{parts[1]}.{_LAYER_KEYS[parts[2]]}.{leaf}"
    if len(parts) == 1 and parts[0] in _GLOBAL_KEYS:
        return f"{_GLOBAL_KEYS[parts[0]]}.{leaf}"
    raise UserError(f"{path}: unexpected tensor {gguf_name!r} for the llama architecture")


def _dequantize(tensor: Any, path: Path) -> np.ndarray:
    from gguf.quants import dequantize

    if tensor.data.nbytes != int(tensor.n_bytes):
        raise UserError(f"{path}: tensor {tensor.name!r} is truncated ({tensor.data.nbytes} of "
                        f"{int(tensor.n_bytes)} bytes); download the file again")
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UserError(f"{path}: tensor {tensor.name!r} uses quantization "
                        f"{tensor.tensor_type.name}, which gguf cannot dequantize") from None
    # GGUF shapes list the fastest-varying dimension first; numpy order is reversed.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    array = np.ascontiguousarray(values.reshape(shape), dtype=np.float32)
    return array if array.flags.writeable else array.copy()  # F32 tensors are read-only memmap views
