"""A checkpoint saved by a TP2 run converts offline to TP1 and to a PP2 Megatron layout, bit-identical."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from megatron_detox.cli import main
from megatron_detox.config import ParallelConfig
from megatron_detox.models.config import ModelConfig
from megatron_detox.parallel import build_parallel_model, init_distributed
from megatron_detox.train.checkpoint import load_checkpoint_weights, model_shape, save_checkpoint
from tests.distributed import run_distributed

CFG = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=48,
                  vocab_size=300, max_position_embeddings=32, position_embedding="rope", normalization="rmsnorm",
                  activation="swiglu", add_bias_linear=False, tie_word_embeddings=False)


def _save_tp2(rank: int, world: int, run_dir: str) -> dict[str, Any]:
    parallel = ParallelConfig(tp=2)
    env = init_distributed(parallel, CFG)
    pm = build_parallel_model(CFG, parallel, env, seed=5, micro_batch_size=1, num_microbatches=1)
    meta = {"model": model_shape(CFG), "model_config": dataclasses.asdict(CFG), "method": "full",
            "layout": env.dims.describe(), "world_size": world}
    save_checkpoint(Path(run_dir), 3, {"model": pm.model_state_dict()}, meta, rank=rank, keep_last=0)
    full = pm.full_state_dict()  # collective: every rank takes part
    return full if rank == 0 else {}


@pytest.mark.distributed
def test_tp2_checkpoint_relayouts_offline(tmp_path: Path) -> None:
    full = run_distributed(_save_tp2, 2, str(tmp_path / "run"))[0]
    assert main(["convert", "--no-progress", "--from", "dcp", "--to", "dcp", "--input", str(tmp_path / "run"),
                 "--output", str(tmp_path / "tp1"), "--tp", "1"]) == 0
    _, tp1 = load_checkpoint_weights(tmp_path / "tp1")
    assert set(tp1) == set(full)
    assert all(torch.equal(tp1[name], tensor) for name, tensor in full.items())
    for args in (["--from", "dcp", "--to", "megatron", "--input", str(tmp_path / "run"), "--output",
                  str(tmp_path / "pp2"), "--pp", "2"],
                 ["--from", "megatron", "--to", "dcp", "--input", str(tmp_path / "pp2"), "--output",
                  str(tmp_path / "back")]):
        assert main(["convert", "--no-progress", *args]) == 0
    assert sorted(p.name for p in (tmp_path / "pp2" / "release").iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    _, back = load_checkpoint_weights(tmp_path / "back")
    for name, tensor in full.items():
        if name in ("tok_embeddings.weight", "output.weight"):  # Megatron keeps the true vocabulary's rows
            tensor = torch.cat([tensor[: CFG.vocab_size], tensor.new_zeros(84, 32)])
        assert torch.equal(back[name], tensor), name
