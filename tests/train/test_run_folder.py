"""Cluster-grade training run folders: one writer per run_dir, full disks, SIGTERM -> requeue code."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_corpus import tiny_gpt_config
from tmpfs import GROW, run_on_small_tmpfs, tmpfs_unavailable

import megatron_detox.convert.formats as export_module  # HFSink writes the export's safetensors
from megatron_detox.cli import main
from megatron_detox.config import load_config
from megatron_detox.diskfull import DiskFull
from megatron_detox.preemption import REQUEUE_EXIT_CODE
from megatron_detox.runlock import LOCK_NAME
from megatron_detox.train import train
from megatron_detox.train.checkpoint import load_checkpoint_weights
from megatron_detox.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
STEPS = 6


def _config(tmp: Path, corpus: tuple[Path, str, int], name: str, **train: object) -> Path:
    """6 steps, a checkpoint after each, none pruned (so a small disk fills up)."""
    text_file, spec, vocab = corpus
    return tiny_gpt_config(tmp / f"{name}.yaml", run_dir=tmp / name, text_file=text_file, tokenizer=spec,
                           vocab_size=vocab, train={"steps": STEPS, "save_interval": 1, "keep_last": 10, **train})


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def alone(corpus: tuple[Path, str, int], tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Per-step losses of a lone, uninterrupted run."""
    tmp = tmp_path_factory.mktemp("alone")
    train(load_config(_config(tmp, corpus, "alone")), progress=False)
    losses = _losses(tmp / "alone")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_a_second_run_on_the_run_dir_is_refused_and_the_first_trains_as_alone(
        tmp_path: Path, corpus: tuple[Path, str, int], alone: dict[int, float],
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, corpus, "run")
    first = subprocess.Popen([sys.executable, "-m", "megatron_detox", "train", str(config), "--no-progress"],
                             cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = tmp_path / "run" / LOCK_NAME
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # it holds the lock, whatever the machine's speed
    try:
        code = main(["train", str(config), "--no-progress"])
    finally:
        first.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"in use by pid {first.pid} on " in err, err
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err.decode()[-2000:]
    assert _losses(tmp_path / "run") == alone and not lock.exists()


def test_enospc_at_a_checkpoint_is_one_line_latest_loads_and_the_rerun_matches(
        tmp_path: Path, corpus: tuple[Path, str, int], alone: dict[int, float],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import megatron_detox.train.trainer as trainer

    real_save, real_fsync = trainer.save_checkpoint, os.fsync

    def full_fsync(fd: int) -> None:  # where NFS and quotas report a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save_on_a_full_disk_at_step_4(run_dir: Path, step: int, *args: object, **kwargs: object) -> Path:
        if step == 4:
            monkeypatch.setattr(os, "fsync", full_fsync)
        try:
            return real_save(run_dir, step, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(trainer, "save_checkpoint", save_on_a_full_disk_at_step_4)
    config = _config(tmp_path, corpus, "full")
    with pytest.raises(DiskFull) as raised:
        train(load_config(config), progress=False)
    checkpoints = tmp_path / "full" / "checkpoints"
    assert str(raised.value).startswith(f"{checkpoints / 'step_000004.tmp'}: no space left on device (")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000001", "step_000002", "step_000003"]
    assert (checkpoints / "latest").read_text().strip() == "step_000003"
    load_checkpoint_weights(tmp_path / "full")  # `latest` loads
    assert not (tmp_path / "full" / LOCK_NAME).exists()

    monkeypatch.setattr(trainer, "save_checkpoint", real_save)  # space again
    train(load_config(config), progress=False)
    assert _losses(tmp_path / "full") == alone


def test_a_small_disk_that_fills_up_fails_at_a_checkpoint_and_the_rerun_matches(
        tmp_path: Path, corpus: tuple[Path, str, int], alone: dict[int, float]) -> None:
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    config = _config(tmp_path, corpus, "unused")
    run = f'{sys.executable} -m megatron_detox train {config} "train.run_dir=$MNT/run" --no-progress'
    script = (f'{run} > /dev/null 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"\n'
              'ls "$MNT/run/checkpoints" > "$OUT/after_first"; cat "$MNT/run/checkpoints/latest" > "$OUT/latest"\n'
              f'{GROW}\n{run} > /dev/null 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"\n'
              'cp "$MNT/run/metrics.jsonl" "$OUT/"\n')
    # ~2.7 MB per checkpoint: two fit in 6.5 MB, the third fills the disk.
    done = run_on_small_tmpfs(tmp_path / "mnt", 6500, script, tmp_path / "out", ENV, REPO)
    out = tmp_path / "out"
    assert done.returncode == 0, done.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err
    last = first_err.strip().splitlines()[-1]  # (above it: the preprocess progress bar)
    assert "checkpoints/step_" in last and ": no space left on device (" in last and " free on " in last
    assert "Traceback" not in first_err
    latest = (out / "latest").read_text().strip()
    assert (out / "after_first").read_text().split() == sorted(["latest", "step_000001", latest])
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    assert {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")} == alone


def test_sigusr1_checkpoints_then_exits_with_the_requeue_code(tmp_path: Path, corpus: tuple[Path, str, int],
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


def test_a_full_disk_during_export_keeps_the_previous_export(tmp_path: Path, corpus: tuple[Path, str, int],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors")
    train(load_config(_config(tmp_path, corpus, "run", steps=1)), progress=False)
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    real_save = export_module.save_file

    def save_until_full(tensors: dict, path: str, metadata: dict) -> None:  # type: ignore[type-arg]
        real_save(tensors, path, metadata=metadata)
        os.truncate(path, os.path.getsize(path) // 2)  # what reached the disk before it filled
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')  # safetensors' own error type, in words

    monkeypatch.setattr(export_module, "save_file", save_until_full)
    capsys.readouterr()
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf.tmp/model.safetensors: no space left on device (" in err
    assert not (tmp_path / "hf.tmp").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
