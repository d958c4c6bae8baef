"""The run-folder lock: refusal naming the holder, stale takeover, other hosts, SLURM requeue, races."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from distributed import run_distributed

from megatron_detox.errors import UserError
from megatron_detox.runlock import (
    LOCK_NAME,
    Holder,
    _process_start,
    acquire,
    hold_output_lock,
    hold_run_lock,
    this_process,
)

REPO = Path(__file__).resolve().parents[1]


def _write_lock(folder: Path, holder: Holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps(asdict(holder)), encoding="utf-8")
    return lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    with hold_run_lock(tmp_path / "run", command="megatron-detox train x.yaml") as lock:
        held = json.loads(lock.read_text(encoding="utf-8"))
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["command"] == "megatron-detox train x.yaml" and held["started"].endswith("Z")
        with hold_run_lock(tmp_path / "run"):  # re-entrant within one process
            pass
        assert lock.exists()
    assert not lock.exists() and [p.name for p in (tmp_path / "run").iterdir()] == []


def test_a_live_holder_is_refused_with_one_line(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        me = this_process("megatron-detox generate --out gen")
        _write_lock(tmp_path, replace(me, pid=holder.pid, pid_start=None))
        with pytest.raises(UserError) as refused, hold_run_lock(tmp_path):
            pass
        message = str(refused.value)
        assert f"in use by pid {holder.pid} on {me.host}" in message and "--out gen" in message
        assert "\n" not in message and "wait for it or stop it" in message
    finally:
        holder.communicate(b"")


def test_a_dead_holder_on_this_host_is_taken_over_and_said_so(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pid = _dead_pid()
    _write_lock(tmp_path, replace(this_process("old run"), pid=pid))
    with hold_run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"took over the lock of pid {pid}" in err and f"its process {pid} is gone" in err


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pid 1 is alive, but it is not the process that took the lock.
    _write_lock(tmp_path, replace(this_process("old run"), pid=1, pid_start=-5))
    with hold_run_lock(tmp_path):
        pass
    assert "pid 1 now belongs to another process" in capsys.readouterr().err


def test_a_lock_left_by_an_earlier_process_with_our_pid_is_stale(tmp_path: Path) -> None:
    lock = _write_lock(tmp_path, replace(this_process("old"), pid_start=-7))  # our pid, another process
    with hold_run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid_start"] != -7
    assert not lock.exists()


def test_another_hosts_lock_needs_force_unlock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_lock(tmp_path, replace(this_process("train on node7"), host="node7.cluster", pid=_dead_pid()))
    with pytest.raises(UserError, match="on node7.cluster .* if that run is dead, rerun with --force-unlock"), \
            hold_run_lock(tmp_path):
        pass
    with hold_run_lock(tmp_path, force=True):
        pass
    assert "node7.cluster" in capsys.readouterr().err and "--force-unlock" not in str(tmp_path)


def test_an_earlier_run_of_the_same_requeued_slurm_job_is_taken_over(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    earlier = replace(this_process("train"), host="node3", pid=77, slurm_restart_count=0)
    _write_lock(tmp_path, earlier)
    with hold_run_lock(tmp_path):
        pass
    _write_lock(tmp_path, replace(earlier, slurm_job_id="999"))  # another job on another host: refused
    with pytest.raises(UserError, match="SLURM job 999"), hold_run_lock(tmp_path):
        pass


def test_the_output_file_lock_sits_beside_the_file(tmp_path: Path) -> None:
    with hold_output_lock(tmp_path / "scored.jsonl") as lock:
        assert lock == tmp_path / "scored.jsonl.lock" and lock.exists()
    assert not lock.exists()


def test_racing_takeovers_of_one_stale_lock_give_one_holder(tmp_path: Path) -> None:
    _write_lock(tmp_path, replace(this_process("old"), pid=_dead_pid()))
    # Each racer stays alive (holding what it took) until every racer has answered.
    code = ("import sys; from pathlib import Path; from megatron_detox.runlock import acquire; "
            "from megatron_detox.errors import UserError\n"
            "try:\n    acquire(Path(sys.argv[1]), command='racer')\n    print('won', flush=True)\n"
            "except UserError as e:\n    print('lost', flush=True)\nsys.stdin.read()")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / LOCK_NAME)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for _ in range(4)]
    outcomes = sorted(racer.stdout.readline().strip() for racer in racers)  # type: ignore[union-attr]
    for racer in racers:
        racer.communicate("", timeout=60)
    assert outcomes == ["lost", "lost", "lost", "won"]


def test_acquire_returns_what_it_wrote(tmp_path: Path) -> None:
    taken = acquire(tmp_path / LOCK_NAME, command="x")
    assert taken is not None and (tmp_path / LOCK_NAME).read_bytes() == taken[1]


def _hold_on_every_rank(rank: int, world_size: int, folder: str) -> list[object]:
    """[this rank's pid, the pid the lock names inside the block, the refusal once pid 1 holds it]."""
    import torch.distributed as dist

    with hold_run_lock(Path(folder)) as lock:
        dist.barrier()  # every rank is inside before any reads
        named = json.loads(lock.read_text())["pid"]
        dist.barrier()
    if rank == 0:  # pid 1 (alive, the same process since boot) takes the folder
        _write_lock(Path(folder), replace(this_process("other"), pid=1, pid_start=_process_start(1)))
    dist.barrier()
    try:
        with hold_run_lock(Path(folder)):
            refusal = ""
    except UserError as refused:
        refusal = str(refused)
    return [os.getpid(), named, refusal]


@pytest.mark.distributed
def test_under_a_launcher_rank_0_holds_the_lock_and_a_refusal_reaches_every_rank(tmp_path: Path) -> None:
    (pid0, named0, refusal0), (pid1, named1, refusal1) = run_distributed(_hold_on_every_rank, 2,
                                                                          str(tmp_path / "run"))
    assert named0 == named1 == pid0 != pid1  # rank 0 holds it for the job
    assert refusal0 == refusal1 and "in use by pid 1 on" in refusal0  # the same line on every rank
