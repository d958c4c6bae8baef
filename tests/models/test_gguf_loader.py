"""GGUF loading: llama.cpp's Q/K row permutation is undone; damaged files are user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf_fixture import write_gguf

from megatron_detox.errors import UserError
from megatron_detox.models import build_model, load_model
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gguf_loader import load_gguf

CFG = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                  vocab_size=200, max_position_embeddings=64, position_embedding="rope", rope_theta=500.0,
                  normalization="rmsnorm", norm_eps=1e-6, activation="swiglu", add_bias_linear=False,
                  tie_word_embeddings=False)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A random model of CFG and the GGUF llama.cpp would have written for it."""
    model = build_model(CFG, seed=0).eval()
    state = model.state_dict()
    with torch.no_grad():
        for name in ("tok_embeddings.weight", "output.weight"):
            state[name][CFG.vocab_size:] = 0
        for name, tensor in state.items():
            if "norm" in name:
                tensor.add_(torch.randn_like(tensor) * 0.1)  # so a swapped norm would show
    path = tmp_path / "tiny.gguf"
    write_gguf(path, CFG, state)
    return model, path


@torch.no_grad()
def test_round_trip_through_llama_cpp_layout(tiny: tuple[torch.nn.Module, Path]) -> None:
    model, path = tiny
    cfg, state = load_gguf(path)
    assert cfg.replace(name=CFG.name, bos_token_id=None, eos_token_id=None, tokenizer=None) == CFG
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.tokenizer) == (1, 2, "gguf")
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    loaded, _ = load_model(str(path))
    tokens = torch.randint(0, CFG.vocab_size, (1, 10))
    assert torch.equal(loaded(tokens), model(tokens))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path / 'absent.gguf'}: GGUF file not found"):
        load_model(str(tmp_path / "absent.gguf"))


def test_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("hello")
    with pytest.raises(UserError, match=f"{path}: not a GGUF file"):
        load_gguf(path)


@pytest.mark.parametrize("keep", [100, 0.5, -100])
def test_truncated_file(tiny: tuple[torch.nn.Module, Path], keep: float) -> None:
    _, path = tiny
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match=f"{path}: .*(truncated|damaged)"):
        load_gguf(path)


def test_truncated_real_file(smollm2_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / smollm2_gguf.name
    with smollm2_gguf.open("rb") as src:
        path.write_bytes(src.read(64 << 10))  # cut inside the token list
    with pytest.raises(UserError, match=f"{path}: .*truncated"):
        load_model(str(path))


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, CFG, build_model(CFG, seed=0).state_dict(), arch="gpt2")
    with pytest.raises(UserError, match=f"{path}: GGUF architecture 'gpt2' is not supported"):
        load_gguf(path)
