"""Cluster-grade training run folders: one writer per run_dir, SIGTERM -> checkpoint + requeue code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_corpus import tiny_gpt_config

from megatron_detox.cli import main
from megatron_detox.preemption import REQUEUE_EXIT_CODE
from megatron_detox.runlock import LOCK_NAME
from megatron_detox.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _config(tmp: Path, corpus: tuple[Path, str, int], name: str, **train: object) -> Path:
    text_file, spec, vocab = corpus
    return tiny_gpt_config(tmp / f"{name}.yaml", run_dir=tmp / name, text_file=text_file, tokenizer=spec,
                           vocab_size=vocab, train={"steps": 6, "save_interval": 3, **train})


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "megatron_detox", "train", str(config), "--no-progress"]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def test_a_second_run_on_the_run_dir_is_refused_and_the_first_trains_as_alone(
        tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config, alone = _config(tmp_path, corpus, "run"), _config(tmp_path, corpus, "alone")
    reference = subprocess.Popen(_command(alone), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    first = subprocess.Popen(_command(config), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = tmp_path / "run" / LOCK_NAME
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # it holds the lock, whatever the machine's speed
    try:
        second = subprocess.run(_command(config), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.count("\n") == 1 and f"in use by pid {first.pid} on " in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-2000:]
    assert reference.wait(timeout=300) == 0
    assert _losses(tmp_path / "run") == _losses(tmp_path / "alone") and sorted(_losses(tmp_path / "run")) == [
        1, 2, 3, 4, 5, 6]
    assert not lock.exists()


def test_sigterm_checkpoints_then_exits_with_the_requeue_code(tmp_path: Path, corpus: tuple[Path, str, int],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, corpus, "preempted", steps=40, save_interval=0)
    metrics = tmp_path / "preempted" / "metrics.jsonl"

    def preempt() -> None:  # what SLURM does before the time limit (--signal=B:USR1@120, forwarded)
        while len(read_metrics(metrics)) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=preempt, daemon=True).start()
    assert main(["train", str(config), "--no-progress"]) == REQUEUE_EXIT_CODE
    step = len(read_metrics(metrics))
    assert (tmp_path / "preempted" / "checkpoints" / "latest").read_text().strip() == f"step_{step:06d}"
    assert not (tmp_path / "preempted" / LOCK_NAME).exists()
    capsys.readouterr()
