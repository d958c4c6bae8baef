"""TP2 / TP2+SP / PP2 / FSDP2 PEFT training steps on gloo ranks match the single-process model.

Each layout group runs in one 2-rank spawn (several cases per spawn: start-up dominates).
Checked per case and rank: loss curve, every PEFT gradient (tol 1e-5), only PEFT
parameters trainable and changed, and the PEFT checkpoint saved on the parallel layout
loads back onto the same layout and on one process with the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from distributed import run_distributed
from peft_parity import CONFIGS, SEED, parallel_runs, reference

from megatron_detox.models import Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.peft import is_peft_name, load_peft_checkpoint, peft_state_dict

pytestmark = pytest.mark.distributed
TOL = {"rtol": 1e-5, "atol": 1e-5}

GROUPS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "tp2": [
        ("llama", "adapter", {"tp": 2}),  # GQA: 2 query groups split over 2 ranks
        ("llama", "prefix", {"tp": 2}),  # reparameterized: column-parallel key/value projections
        ("gpt", "prefix-static", {"tp": 2, "sequence_parallel": True}),  # Shard(1) static prefix
        ("gpt", "adapter", {"tp": 2, "sequence_parallel": True}),  # adapters on [b, s/tp, h]
    ],
    "pp2-fsdp2": [
        ("gpt", "adapter", {"pp": 2}),
        ("llama", "prefix", {"pp": 2}),
        ("llama", "adapter", {"dp_shard": 2}),  # FSDP2 shards PEFT parameters like the rest
        ("gpt", "prefix-static", {"dp_shard": 2}),  # P=3 rows over 2 ranks: uneven FSDP shards
    ],
}


def check_case(model_name: str, case: str, results: list[dict[str, Any]], ckpt: Path) -> None:
    ref = reference(model_name, case)
    peft_names = set(ref["grads"])
    assert peft_names and all(is_peft_name(n) for n in peft_names)
    for rank, res in enumerate(results):
        where = f"{model_name}/{case} rank {rank}"
        assert res["trainable"] and set(res["trainable"]) <= peft_names, where  # a stage holds its layers' share
        assert set(res["grads"]) == peft_names, where  # all stages' PEFT gradients, nothing else
        for name, grad in ref["grads"].items():
            torch.testing.assert_close(res["grads"][name], grad, **TOL, msg=f"{where} grad {name}")
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]), **TOL)
        for name, value in res["initial"].items():
            if is_peft_name(name):
                torch.testing.assert_close(res["final"][name], ref["state"][name], **TOL)
            else:
                assert torch.equal(res["final"][name], value), f"{where}: base weight {name} changed"
        assert res["reloaded"] and all(torch.equal(v, res["final"][n]) for n, v in res["reloaded"].items()), where

    cfg = CONFIGS[model_name]
    plain = Transformer(cfg)
    init_weights(plain, cfg, SEED)
    load_peft_checkpoint(plain, cfg, ckpt)
    loaded = peft_state_dict(plain)
    assert set(loaded) == set(results[0]["peft_names"])
    for name, value in loaded.items():
        assert torch.equal(value, results[0]["final"][name]), name


@pytest.mark.parametrize("group", list(GROUPS))
def test_peft_steps_match_single_process_and_checkpoints_load_on_one_process(group, tmp_path):
    cases = GROUPS[group]
    per_rank = run_distributed(parallel_runs, 2, cases, str(tmp_path))
    for i, (model_name, case, _) in enumerate(cases):
        check_case(model_name, case, [rank_results[i] for rank_results in per_rank], tmp_path / str(i))
