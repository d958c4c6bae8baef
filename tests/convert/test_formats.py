"""HF -> ours -> HF is bit-identical (single and sharded safetensors); GGUF -> ours equals the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf_fixture import write_gguf
from safetensors import safe_open

from megatron_detox.cli import main
from megatron_detox.models import build_model
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gguf_loader import load_gguf
from megatron_detox.train.checkpoint import load_checkpoint_weights

transformers = pytest.importorskip("transformers")


def _convert(*args: str) -> None:
    assert main(["convert", "--no-progress", *args]) == 0


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})
    return out


def _hf_model(kind: str) -> object:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=32)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, vocab_size=300,
                                      max_position_embeddings=32, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_to_ours_to_hf_is_bit_identical(tmp_path: Path, kind: str) -> None:
    model = _hf_model(kind)
    with torch.no_grad():
        for param in model.parameters():  # norms are ones, biases zeros at init: make every tensor tell
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")  # sharded, with an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    _convert("--from", "hf", "--to", "dcp", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours"))
    _convert("--from", "dcp", "--to", "hf", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "back"),
             "--max-shard-size", str(40e3 / 2**30))
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    want, got = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert set(got) == set(want) - {"lm_head.weight" if kind == "gpt2" else ""}  # GPT-2 ties it
    for name, tensor in got.items():
        assert torch.equal(tensor, want[name]), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    tokens = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, model.eval()(tokens).logits)


def test_gguf_to_ours_equals_the_gguf_loader(tmp_path: Path) -> None:
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                      vocab_size=200, max_position_embeddings=64, position_embedding="rope", rope_theta=500.0,
                      normalization="rmsnorm", norm_eps=1e-6, activation="swiglu", add_bias_linear=False,
                      tie_word_embeddings=False)
    state = build_model(cfg, seed=0).state_dict()
    write_gguf(tmp_path / "tiny.gguf", cfg, state)
    _convert("--from", "gguf", "--to", "dcp", "--input", str(tmp_path / "tiny.gguf"), "--output", str(tmp_path / "o"))
    want_cfg, want = load_gguf(tmp_path / "tiny.gguf")
    got_cfg, got = load_checkpoint_weights(tmp_path / "o")
    assert got_cfg == want_cfg
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
