"""Cluster-grade ``score --output``: one writer per output, SIGTERM -> requeue code, exactly-once rerun."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from megatron_detox.preemption import REQUEUE_EXIT_CODE
from megatron_detox.scoring.server import read_request_log

from .conftest import REPO, StartServer, cli_command, read_jsonl, write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PERSPECTIVE_API_KEY": "test-key-run-folder"}
NUM = 60


def _args(url: str, source: Path, output: Path, qps: int) -> list[str]:
    return cli_command("score", "--scorer", "perspective", "--perspective-url", url, "--input", str(source),
                       "--output", str(output), "--qps", str(qps), "--workers", "2", "--no-progress")


def _committed(cache: Path) -> int:
    try:
        with sqlite3.connect(cache) as db:
            return int(db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


def _input(tmp_path: Path) -> Path:
    words = ["kind", "idiot", "weather", "stupid", "garden", "hate", "music", "damn", "river"]
    return write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"{words[i % 9]} {words[i * 5 % 9]} {i}"}
                                               for i in range(NUM)])


def test_a_second_run_on_the_output_is_refused_and_the_first_scores_as_alone(start_server: StartServer,
                                                                            tmp_path: Path) -> None:
    server, source = start_server(), _input(tmp_path)
    output = tmp_path / "scored.jsonl"
    first = subprocess.Popen(_args(server.url, source, output, 40), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    lock = tmp_path / "scored.jsonl.lock"
    deadline = time.monotonic() + 60
    while not lock.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(_args(server.url, source, output, 40), cwd=REPO, env=ENV, capture_output=True,
                                text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"in use by pid {first.pid} on " in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()[-2000:]
    alone = tmp_path / "alone.jsonl"
    assert subprocess.run(_args(server.url, source, alone, 200), cwd=REPO, env=ENV, capture_output=True).returncode == 0
    assert read_jsonl(output) == read_jsonl(alone) and len(read_jsonl(output)) == NUM
    assert not lock.exists()


def test_sigterm_mid_scoring_exits_with_the_requeue_code_and_the_rerun_is_exactly_once(
        start_server: StartServer, tmp_path: Path) -> None:
    server, source = start_server(), _input(tmp_path)
    output, cache = tmp_path / "scored.jsonl", tmp_path / "scored.jsonl.scores.sqlite"
    args = _args(server.url, source, output, 20)
    first = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _committed(cache) < 10:
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before 10 texts were scored"
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == REQUEUE_EXIT_CODE, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    kept = _committed(cache)
    assert 10 <= kept < NUM and not output.exists() and not list(tmp_path.glob(".scored.jsonl.*.tmp"))

    rerun_started = time.time()
    rerun = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({kept} from cache, {NUM - kept} texts sent" in rerun.stderr
    out = read_jsonl(output)
    assert [r["id"] for r in out] == list(range(NUM)) and all("scores" in r for r in out)
    log = read_request_log(server.log_path)  # type: ignore[attr-defined]
    assert sum(1 for e in log if e["t"] >= rerun_started) == NUM - kept  # nothing scored twice
    answered = Counter(e["text_sha256"] for e in log if e["status"] == 200)
    assert len(answered) == NUM and sum(answered.values()) <= NUM + 2  # + the 2 in flight at the signal
