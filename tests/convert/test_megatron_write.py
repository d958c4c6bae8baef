"""Ours -> Megatron-LM (any TP x PP) -> ours is bit-identical; the written folder is what Megatron-LM loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from megatron_fixture import ours_checkpoint

from megatron_detox.cli import main
from megatron_detox.convert.megatron_keys import megatron_padded_vocab
from megatron_detox.convert.megatron_load import load_megatron_file
from megatron_detox.models.config import ModelConfig
from megatron_detox.train.checkpoint import load_checkpoint_weights, model_shape

GPT = ModelConfig(num_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=300, max_position_embeddings=32)
LLAMA = GPT.replace(num_query_groups=2, ffn_hidden_size=48, position_embedding="rope", normalization="rmsnorm",
                    activation="swiglu", add_bias_linear=False, tie_word_embeddings=False, norm_eps=1e-6)


def _convert(*args: str) -> None:
    assert main(["convert", "--no-progress", *args]) == 0


@pytest.mark.parametrize("cfg", [GPT, LLAMA], ids=["gpt", "llama"])
def test_ours_to_megatron_tp2_pp2_and_back_is_bit_identical(tmp_path: Path, cfg: ModelConfig) -> None:
    state = ours_checkpoint(tmp_path / "ours", cfg, seed=1)
    _convert("--from", "dcp", "--to", "megatron", "--input", str(tmp_path / "ours"), "--output",
             str(tmp_path / "mlm"), "--tp", "2", "--pp", "2")
    _convert("--from", "megatron", "--to", "dcp", "--input", str(tmp_path / "mlm"), "--output", str(tmp_path / "back"))
    back_cfg, back = load_checkpoint_weights(tmp_path / "back")
    assert model_shape(back_cfg) == model_shape(cfg)
    assert (back_cfg.vocab_size, back_cfg.norm_eps, back_cfg.rope_theta) == (cfg.vocab_size, cfg.norm_eps, cfg.rope_theta)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_written_folder_has_megatron_layout_and_args(tmp_path: Path) -> None:
    ours_checkpoint(tmp_path / "ours", GPT)
    _convert("--from", "dcp", "--to", "megatron", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "mlm"),
             "--tp", "2", "--pp", "2", "--dtype", "bf16")
    root = tmp_path / "mlm"
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    assert sorted(p.name for p in (root / "release").iterdir()) == [
        "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    first = load_megatron_file(root / "release" / "mp_rank_01_000" / "model_optim_rng.pt")
    last = load_megatron_file(root / "release" / "mp_rank_01_001" / "model_optim_rng.pt")
    args = first["args"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.padded_vocab_size,
            args.vocab_size, args.num_layers, args.bf16, first["checkpoint_version"]) == (2, 2, 512, 300, 4, True, 3.0)
    model = first["model"]
    assert model["embedding.word_embeddings.weight"].shape == (256, 32)  # half of 512 padded rows
    assert model["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    assert model["decoder.layers.1.self_attention.linear_qkv.weight"].shape == (48, 32)  # 2 heads x 3 x 8
    assert model["decoder.layers.1.self_attention.linear_proj.weight"].shape == (32, 16)
    assert "decoder.layers.2.input_layernorm.weight" not in model  # layers are numbered per stage
    assert set(last["model"]) >= {"output_layer.weight", "decoder.final_layernorm.weight"}  # the tied copy
    assert torch.equal(last["model"]["output_layer.weight"], model["embedding.word_embeddings.weight"])


def test_vocabulary_padding_follows_megatron() -> None:
    assert [megatron_padded_vocab(50257, 128, tp) for tp in (1, 2, 8)] == [50304, 50432, 51200]


def test_transformer_engine_names(tmp_path: Path) -> None:
    state = ours_checkpoint(tmp_path / "ours", LLAMA, seed=2)
    _convert("--from", "dcp", "--to", "megatron", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "mlm"),
             "--tp", "2", "--megatron-te")
    model = load_megatron_file(tmp_path / "mlm" / "release" / "mp_rank_00" / "model_optim_rng.pt")["model"]
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in model
    assert "decoder.layers.0.input_layernorm.weight" not in model
    _convert("--from", "megatron", "--to", "dcp", "--input", str(tmp_path / "mlm"), "--output", str(tmp_path / "back"))
    _, back = load_checkpoint_weights(tmp_path / "back")
    assert all(torch.equal(back[name], tensor) for name, tensor in state.items())
