"""The documented launch: ``torchrun -m megatron_detox train configs/train/tiny.yaml parallel.tp=2``.

The per-step losses the command prints on TP2 and PP2 equal the single-process run's
to 4 decimals (the issue's acceptance check, through the real launcher and CLI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^step (\d+)/\d+ \| loss ([0-9.]+)", re.MULTILINE)


def _printed_losses(tmp_path: Path, text_file: Path, name: str, nproc: int, *overrides: str) -> dict[int, str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    command = [*launcher, "-m", "megatron_detox", "train", "configs/train/tiny.yaml", "--no-progress",
               f"data.text_files=[{text_file}]", f"train.run_dir={tmp_path / name}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = {int(step): f"{float(loss):.4f}" for step, loss in STEP_LINE.findall(result.stdout)}
    assert sorted(losses) == [1, 2, 3, 4, 5], result.stdout[-2000:]
    assert result.stdout.count("trained to step 5;") == 1, result.stdout[-2000:]  # once per job, not per rank
    return losses


@pytest.mark.distributed
def test_torchrun_tp2_and_pp2_print_the_single_process_losses(tmp_path: Path, shared_data: Path,
                                                             smollm2_gguf: Path) -> None:
    text_file = shared_data / "lm_text" / "wikitext2_tok_valid.txt"
    reference = _printed_losses(tmp_path, text_file, "tp1", 1)
    assert _printed_losses(tmp_path, text_file, "tp2", 2, "parallel.tp=2") == reference
    assert _printed_losses(tmp_path, text_file, "pp2", 2, "parallel.pp=2") == reference
