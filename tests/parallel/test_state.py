"""Checkpoints move between layouts: DCP save on one, load on another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_detox.config import ParallelConfig
from megatron_detox.parallel import build_parallel_model, init_distributed
from tests.distributed import run_distributed
from tests.parallel.parity import CONFIGS


def _save_load(rank: int, world: int, folder: str, model_name: str, save_layout: dict[str, Any],
               load_layout: dict[str, Any]) -> dict[str, Any]:
    cfg = CONFIGS[model_name]
    out: dict[str, Any] = {}
    for tag, layout, seed in (("saved", save_layout, 1), ("loaded", load_layout, 2)):
        parallel = ParallelConfig(**layout)
        env = init_distributed(parallel, cfg)
        pm = build_parallel_model(cfg, parallel, env, seed=seed, micro_batch_size=2, num_microbatches=2)
        if tag == "saved":
            dcp.save(pm.model_state_dict(), checkpoint_id=folder)
        else:
            out["before"] = pm.full_state_dict()
            state = pm.model_state_dict()
            dcp.load(state, checkpoint_id=folder)
            pm.load_model_state_dict(state)
        out[tag] = pm.full_state_dict()
    return out


CASES = [
    ("gpt", {"tp": 2}, {"pp": 2}),  # tied head: one tensor on TP ranks, two copies across stages
    ("llama", {"dp_shard": 2}, {"tp": 2, "sequence_parallel": True}),
]


def _all_cases(rank: int, world: int, folder: str) -> list[dict[str, Any]]:
    # One spawn for every case: process start-up dominates on a small CPU box.
    return [_save_load(rank, world, f"{folder}/{i}", *case) for i, case in enumerate(CASES)]


@pytest.mark.distributed
def test_checkpoint_reshards_across_layouts(tmp_path: Path) -> None:
    results = run_distributed(_all_cases, 2, str(tmp_path))
    for rank, per_case in enumerate(results):
        for case, out in zip(CASES, per_case):
            where = f"rank {rank} {case}"
            assert out["saved"].keys() == out["loaded"].keys(), where
            differs = any(not torch.equal(out["before"][k], v) for k, v in out["saved"].items())
            assert differs, "the second model must start from other weights for this test to mean anything"
            for name, value in out["saved"].items():
                torch.testing.assert_close(out["loaded"][name], value, rtol=0, atol=0, msg=f"{where} {name}")
