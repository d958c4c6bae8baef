"""Cluster-grade ``generate --out``: one writer per folder, a full disk and SIGTERM lose nothing, reruns are
exactly-once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tmpfs import GROW, run_on_small_tmpfs, tmpfs_unavailable

from megatron_detox.cli import main
from megatron_detox.preemption import REQUEUE_EXIT_CODE
from megatron_detox.runlock import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
NUM = 60


def _args(model: Path, out: Path | str) -> list[str]:
    return ["generate", "--model", str(model), "--unconditional", str(NUM), "--max-new-tokens", "16",
            "--batch-size", "2", "--seed", "4", "--out", str(out), "--no-progress"]


def _command(model: Path, out: Path | str) -> list[str]:
    return [sys.executable, "-m", "megatron_detox", *_args(model, out)]


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def straight(tiny_hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """generations.jsonl of a lone, uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    assert main(_args(tiny_hf_folder, out)) == 0
    return (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()


def test_second_run_on_the_folder_is_refused_naming_the_holder(tmp_path: Path, tiny_hf_folder: Path,
                                                               straight: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    first = subprocess.Popen(_command(tiny_hf_folder, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _wait_for(lambda: (out / LOCK_NAME).exists(), first, "the lock was taken")
    first.send_signal(signal.SIGSTOP)  # holds the lock, whatever the machine's speed
    try:
        code = main(_args(tiny_hf_folder, out))
    finally:
        first.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"in use by pid {first.pid} on " in err, err
    assert err.startswith("megatron-detox generate: error: ")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-2000:]
    assert (out / "generations.jsonl").read_text(encoding="utf-8").splitlines() == straight
    assert _lines(out / "shards" / "rank0.jsonl") == NUM  # the refused run wrote nothing
    assert not (out / LOCK_NAME).exists()


def test_sigterm_exits_with_the_requeue_code_and_the_rerun_is_exactly_once(tmp_path: Path, tiny_hf_folder: Path,
                                                                           straight: list[str]) -> None:
    out = tmp_path / "gen"
    shard = out / "shards" / "rank0.jsonl"
    proc = subprocess.Popen(_command(tiny_hf_folder, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _lines(shard) >= 6, proc, "6 records were written")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    kept = _lines(shard)
    assert 6 <= kept < NUM and shard.read_bytes().endswith(b"\n")  # every finished record, none torn
    assert not (out / LOCK_NAME).exists() and not (out / "generations.jsonl").exists()

    rerun = subprocess.run(_command(tiny_hf_folder, out), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{NUM - kept} samples to do ({kept} already done)" in rerun.stderr
    assert (out / "generations.jsonl").read_text(encoding="utf-8").splitlines() == straight
    assert sorted(json.loads(line)["id"] for line in shard.read_text().splitlines()) == list(range(NUM))


@pytest.mark.slow
def test_a_small_disk_that_fills_up_keeps_every_record_and_the_rerun_is_exactly_once(
        tmp_path: Path, tiny_hf_folder: Path, straight: list[str]) -> None:
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    run = " ".join(_command(tiny_hf_folder, "$MNT/gen"))
    script = (f'{run} 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"\n'
              'cp "$MNT/gen/shards/rank0.jsonl" "$OUT/kept.jsonl"\n'
              f'{GROW}\n{run} 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"\n'
              'cp "$MNT/gen/generations.jsonl" "$MNT/gen/shards/rank0.jsonl" "$OUT/"\n')
    done = run_on_small_tmpfs(tmp_path / "mnt", 16, script, tmp_path / "out", ENV, REPO)
    out = tmp_path / "out"
    assert done.returncode == 0, done.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err
    last = first_err.strip().splitlines()[-1]
    assert ": no space left on device (" in last and " free on " in last and "Traceback" not in first_err
    kept = (out / "kept.jsonl").read_bytes()
    done_before = kept.count(b"\n")
    assert kept.endswith(b"\n") and 0 < done_before < NUM  # complete records only
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    assert f"({done_before} already done)" in (out / "second.err").read_text()
    assert (out / "generations.jsonl").read_text(encoding="utf-8").splitlines() == straight
    ids = [json.loads(line)["id"] for line in (out / "rank0.jsonl").read_text().splitlines()]
    assert sorted(ids) == list(range(NUM))  # each sample generated exactly once
