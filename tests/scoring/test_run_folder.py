"""Cluster-grade ``score --output``: one writer per output, a full disk and SIGTERM lose nothing, reruns
are exactly-once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tmpfs import GROW, run_on_small_tmpfs, tmpfs_unavailable

from megatron_detox.cli import main
from megatron_detox.preemption import REQUEUE_EXIT_CODE
from megatron_detox.scoring.server import read_request_log

from .conftest import REPO, StartServer, cli_command, read_jsonl, write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PERSPECTIVE_API_KEY": "test-key-run-folder"}
NUM = 60


def _score(url: str, source: Path | str, output: Path | str, qps: int) -> list[str]:
    return ["score", "--scorer", "perspective", "--perspective-url", url, "--input", str(source),
            "--output", str(output), "--qps", str(qps), "--workers", "2", "--no-progress"]


def _args(url: str, source: Path, output: Path, qps: int) -> list[str]:
    return cli_command(*_score(url, source, output, qps))


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


def test_a_second_run_on_the_output_is_refused_and_the_first_scores_as_alone(
        start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
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
        code = main(_score(server.url, source, output, 40))
    finally:
        first.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"in use by pid {first.pid} on " in err, err
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err.decode()[-2000:]
    alone = tmp_path / "alone.jsonl"
    monkeypatch.setenv("PERSPECTIVE_API_KEY", ENV["PERSPECTIVE_API_KEY"])
    assert main(_score(server.url, source, alone, 500)) == 0
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
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
    kept = _committed(cache)
    assert 10 <= kept < NUM and not output.exists() and not list(tmp_path.glob(".scored.jsonl.*.tmp")), kept

    rerun_started = time.time()
    rerun = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({kept} from cache, {NUM - kept} texts sent" in rerun.stderr, (kept, rerun.stderr[-2000:])
    out = read_jsonl(output)
    assert [r["id"] for r in out] == list(range(NUM)) and all("scores" in r for r in out)
    log = read_request_log(server.log_path)  # type: ignore[attr-defined]
    rerun_sent = sum(1 for e in log if e["t"] >= rerun_started)
    assert rerun_sent == NUM - kept, (rerun_sent, kept)  # nothing committed was scored twice
    answered = Counter(e["text_sha256"] for e in log if e["status"] == 200)
    # Answered twice: at most the batches in flight at the signal (2 x workers: running, or answered
    # but not yet committed), never a committed one.
    assert len(answered) == NUM and sum(answered.values()) <= NUM + 4, sum(answered.values())


@pytest.mark.slow
def test_a_small_disk_that_fills_up_keeps_every_scored_text_and_the_rerun_is_exactly_once(
        start_server: StartServer, tmp_path: Path) -> None:
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    server, source = start_server(), _input(tmp_path)
    run = " ".join([sys.executable, "-m", "megatron_detox", *_score(server.url, source, "$MNT/scored.jsonl", 500)])
    count = (f"{sys.executable} -c \"import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
             f".execute('SELECT COUNT(*) FROM scores').fetchone()[0])\" $MNT/scored.jsonl.scores.sqlite")
    script = (f'{run} 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"; ls -a "$MNT" > "$OUT/after_first"\n'
              f'{GROW}\n{count} > "$OUT/committed"\n'  # (reading a WAL database needs a little space)
              f'{run} 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"\n'
              'cp "$MNT/scored.jsonl" "$OUT/"\n')
    done = run_on_small_tmpfs(tmp_path / "mnt", 96, script, tmp_path / "out", ENV, REPO)
    out = tmp_path / "out"
    assert done.returncode == 0, done.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err
    assert first_err.count("\n") == 1 and ": no space left on device (" in first_err and " free on " in first_err
    assert not [name for name in (out / "after_first").read_text().split() if name.endswith(".tmp")]
    second_err = (out / "second.err").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second_err
    out_records = read_jsonl(out / "scored.jsonl")
    assert [r["id"] for r in out_records] == list(range(NUM)) and all("scores" in r for r in out_records)
    committed = int((out / "committed").read_text())
    assert 0 < committed < NUM
    assert f"({committed} from cache, {NUM - committed} texts sent" in second_err  # nothing scored twice
    answered = Counter(e["text_sha256"] for e in read_request_log(server.log_path)  # type: ignore[attr-defined]
                       if e["status"] == 200)
    assert len(answered) == NUM and sum(answered.values()) <= NUM + 4  # + at most the 4 in flight when it filled
