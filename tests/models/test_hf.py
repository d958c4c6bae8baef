"""Hugging Face folders: logits parity with transformers, export round trip, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig, build_model, load_model
from megatron_detox.models.hf import load_hf, to_hf_state_dict

transformers = pytest.importorskip("transformers")

VOCAB = 300  # padded to 384: the padded logits must be zero


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every weight, norms included, so a swapped or transposed tensor shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _gpt2(tmp_path: Path, activation: str) -> Any:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=96, n_positions=32, vocab_size=VOCAB,
                                  activation_function=activation, layer_norm_epsilon=1e-5)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _randomize(model)
    model.save_pretrained(tmp_path)
    return model


def _llama(tmp_path: Path, tied: bool, bias: bool) -> Any:
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
                                   rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                                   attention_bias=bias, mlp_bias=bias)
    model = transformers.LlamaForCausalLM(cfg).eval()
    _randomize(model)
    model.save_pretrained(tmp_path, max_shard_size="100KB")  # sharded: exercises the index file
    return model


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _assert_same_logits(ours: torch.nn.Module, cfg: ModelConfig, theirs: Any) -> None:
    tokens = _tokens()
    logits = ours(tokens)
    assert logits.shape[-1] == cfg.padded_vocab_size and logits[..., cfg.vocab_size:].abs().max() == 0
    diff = (logits[..., : cfg.vocab_size] - theirs(tokens).logits).abs().max().item()
    assert diff <= 1e-4, f"max abs logit diff {diff}"


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gpt2_logits_match_transformers(tmp_path: Path, activation: str) -> None:
    theirs = _gpt2(tmp_path, activation)
    model, cfg = load_model(str(tmp_path))
    assert cfg.activation == ("gelu_tanh" if activation == "gelu_new" else "gelu")
    assert cfg.ffn_size == 96 and cfg.tie_word_embeddings
    _assert_same_logits(model, cfg, theirs)


@pytest.mark.parametrize(("tied", "bias"), [(False, False), (True, True)])
def test_llama_gqa_logits_match_transformers(tmp_path: Path, tied: bool, bias: bool) -> None:
    theirs = _llama(tmp_path, tied, bias)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, cfg = load_model(str(tmp_path))
    assert (cfg.kv_heads, cfg.rope_theta, cfg.tie_word_embeddings, cfg.add_bias_linear) == (2, 500.0, tied, bias)
    _assert_same_logits(model, cfg, theirs)


def _export(cfg: ModelConfig, state: dict[str, torch.Tensor], folder: Path) -> None:
    hf_config, hf_state = to_hf_state_dict(cfg, state)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file(hf_state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_export_round_trip(tmp_path: Path, family: str) -> None:
    if family == "gpt":
        cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=VOCAB,
                          max_position_embeddings=32, activation="gelu")
    else:
        cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=1,
                          ffn_hidden_size=96, vocab_size=VOCAB, max_position_embeddings=32,
                          position_embedding="rope", rope_theta=1000.0, normalization="rmsnorm",
                          activation="swiglu", add_bias_linear=False, tie_word_embeddings=False)
    ours = build_model(cfg, seed=3).eval()
    _randomize(ours)
    with torch.no_grad():  # padded rows are zero in real checkpoints; export drops them
        ours.tok_embeddings.weight[cfg.vocab_size:] = 0  # type: ignore[union-attr]
        ours.output.weight[cfg.vocab_size:] = 0  # type: ignore[union-attr]
    _export(cfg, ours.state_dict(), tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    _assert_same_logits(ours, cfg, theirs)
    back_cfg, back_state = load_hf(tmp_path / "hf")
    assert back_cfg.replace(name=cfg.name) == cfg
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back_state[name], tensor), name


def test_export_rejects_a_config_hf_cannot_express() -> None:
    cfg = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=VOCAB,
                      position_embedding="rope", normalization="layernorm", activation="gelu")
    with pytest.raises(UserError, match="cannot be expressed"):
        to_hf_state_dict(cfg, {})


# ---------------------------------------------------------------- bad input


@pytest.fixture
def gpt2_folder(tmp_path: Path) -> Path:
    _gpt2(tmp_path / "gpt2", "gelu_new")
    return tmp_path / "gpt2"


def test_missing_folder_or_weights(tmp_path: Path, gpt2_folder: Path) -> None:
    with pytest.raises(UserError, match="not a model preset, a .gguf file or a Hugging Face folder"):
        load_model(str(tmp_path / "nowhere"))
    (gpt2_folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match=f"{gpt2_folder}: neither model.safetensors"):
        load_hf(gpt2_folder)


def test_truncated_safetensors(gpt2_folder: Path) -> None:
    path = gpt2_folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=str(path)):
        load_hf(gpt2_folder)


def test_unknown_model_type(gpt2_folder: Path) -> None:
    config = gpt2_folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "bert"}))
    with pytest.raises(UserError, match=f"{config}: model_type 'bert' is not supported"):
        load_hf(gpt2_folder)


def test_shape_mismatch_names_file_and_tensor(gpt2_folder: Path) -> None:
    config = gpt2_folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_inner": 128}))
    with pytest.raises(UserError, match=r"model.safetensors: tensor 'transformer.h.0.mlp.c_fc.weight' has shape"):
        load_hf(gpt2_folder)


def test_missing_tensor_names_it(gpt2_folder: Path) -> None:
    from safetensors.torch import load_file

    path = gpt2_folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["transformer.h.1.ln_2.bias"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match="'transformer.h.1.ln_2.bias' is missing"):
        load_hf(gpt2_folder)
