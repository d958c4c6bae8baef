"""launch/slurm/requeue.sh: the signal reaches the run, and exit 75 (or a stop after a signal) requeues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A stand-in for `srun python -m megatron_detox ...`: the real pre-emption handling, no model.
CHILD = ("import sys, time, pathlib; from megatron_detox.preemption import REQUEUE_EXIT_CODE, Preempted, "
         "raise_on_preemption\n"
         "try:\n    with raise_on_preemption():\n        pathlib.Path(sys.argv[1]).touch()\n        time.sleep(60)\n"
         "except Preempted:\n    sys.exit(REQUEUE_EXIT_CODE)\n")


def _job(tmp_path: Path, command: str) -> tuple[subprocess.Popen[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol.calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "PYTHONPATH": str(REPO)}
    script = f'set -euo pipefail\nsource launch/slurm/requeue.sh\nrun_requeueable {command}\n'
    return subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, text=True, stderr=subprocess.PIPE), calls


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_to_the_batch_script_stops_the_run_and_requeues_the_job(tmp_path: Path, signum: int) -> None:
    ready = tmp_path / "ready"
    job, calls = _job(tmp_path, f"{sys.executable} -c '{CHILD}' {ready}")
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read() if job.stderr else ""
        time.sleep(0.02)
    job.send_signal(signum)  # what `#SBATCH --signal=B:USR1@120` (or pre-emption) does
    _, err = job.communicate(timeout=60)
    assert job.returncode == 75, err
    assert calls.read_text() == "requeue 4242\n" and "requeueing SLURM job 4242" in err


@pytest.mark.parametrize(("code", "requeued"), [(0, False), (2, False), (1, False), (75, True)])
def test_only_the_requeue_code_requeues_without_a_signal(tmp_path: Path, code: int, requeued: bool) -> None:
    job, calls = _job(tmp_path, f"{sys.executable} -c 'import sys; sys.exit({code})'")
    job.communicate(timeout=60)
    assert job.returncode == code
    assert calls.exists() == requeued
