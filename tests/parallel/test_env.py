"""Launcher environment: torchrun, SLURM (nodelist parsing) and a plain single process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from megatron_detox.config import ParallelConfig
from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig
from megatron_detox.parallel import init_distributed, parse_nodelist, read_launch_env

TINY = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100,
                   make_vocab_size_divisible_by=64)


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("node01", ["node01"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("gpu[1,3-4],cpu7", ["gpu1", "gpu3", "gpu4", "cpu7"]),
    ("rack1-n[008-010]-ib", ["rack1-n008-ib", "rack1-n009-ib", "rack1-n010-ib"]),
])
def test_parse_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert parse_nodelist(nodelist) == hosts


def test_torchrun_variables() -> None:
    info = read_launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h0",
                            "MASTER_PORT": "1234"})
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port, info.launcher) == (
        3, 8, 1, "h0", 1234, "torchrun")


def test_slurm_variables_take_master_from_nodelist() -> None:
    info = read_launch_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                            "SLURM_JOB_NODELIST": "dgx[07-08]", "PATH": ""})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (9, 16, 1, "slurm")
    assert info.master_addr == "dgx07"


def test_bad_rank_variable_is_a_user_error() -> None:
    with pytest.raises(UserError, match="RANK='x'"):
        read_launch_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_single_process_without_environment() -> None:
    env = init_distributed(ParallelConfig(), TINY, env={})
    assert (env.rank, env.world_size, env.mesh) == (0, 1, None)
    assert not dist.is_initialized()


def test_impossible_layout_fails_before_joining_the_group() -> None:
    # WORLD_SIZE=2 with tp=4: refused before init_process_group (which would block on
    # the missing peer) and before anything is allocated.
    with pytest.raises(UserError, match="world size 2 is not divisible"):
        init_distributed(ParallelConfig(tp=4), TINY, env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                                          "MASTER_PORT": "1"})
    assert not dist.is_initialized()


def test_cli_prints_one_line_for_an_impossible_layout(tmp_path: Path) -> None:
    # The real command as torchrun would start rank 0 of 3: the layout fits the model but not
    # the world, so only init_distributed can refuse it, before joining the group (MASTER_PORT=1
    # would fail or hang) and before the run folder is created.
    from tests.conftest import REPO

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "megatron_detox", "train", "configs/train/tiny.yaml",
                           "parallel.tp=2", "parallel.pp=2", f"train.run_dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                               "PATH": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "megatron-detox train: error: parallel: world size 3 is not divisible by tp*pp*dp_replicate=2*2*1=4; "
        "change the layout or the number of processes"]
    assert not run_dir.exists()
