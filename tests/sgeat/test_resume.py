"""``kill -9`` in the middle of generation or training, then the same command again: the run
finishes with the same manifest counts, every sample once, and the same final metrics as a run
that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from megatron_detox.jsonl import iter_jsonl
from tests.sgeat.conftest import CI_CONFIG, REPO, tiny_overrides

# Long enough to be killed mid-way: 160 samples of 48 tokens, one checkpoint per training step.
LONGER = ["generate.num_samples=160", "generate.batch_size=2", "generate.max_new_tokens=48", "train.steps=12"]


def _command(folder: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "megatron_detox", "sgeat", "run", str(CI_CONFIG),
            *tiny_overrides(folder, work), *LONGER, "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_when(command: list[str], ready: Any) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` is true."""
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _summary(work: Path) -> dict[str, Any]:
    manifest = json.loads((work / "manifest.json").read_text())
    counts = {name: {k: v for k, v in record["counts"].items() if k not in ("num_from_cache", "num_texts_sent")}
              for name, record in manifest["stages"].items()}
    metrics = {}
    for name in ("base", "detox"):
        tox = json.loads((work / "evaluate" / name / "metrics.json").read_text())
        ppl = json.loads((work / "evaluate" / name / "perplexity.json").read_text())
        metrics[name] = {"toxic": tox["toxic"], "nontoxic": tox["nontoxic"],
                         "perplexity": {k: v["perplexity"] for k, v in ppl.items()}}
    ids = [record["id"] for _, record in iter_jsonl(work / "generate" / "generations.jsonl")]
    return {"counts": counts, "metrics": metrics, "ids": ids, "status": {n: r["status"] for n, r in
                                                                         manifest["stages"].items()}}


@pytest.fixture(scope="module")
def reference(tiny_pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("uninterrupted") / "run"
    _run(_command(tiny_pretrained, work))
    summary = _summary(work)
    summary["generations"] = (work / "generate" / "generations.jsonl").read_bytes()
    return summary


def _checked(work: Path, reference: dict[str, Any]) -> None:
    summary = _summary(work)
    assert summary["ids"] == list(range(160))  # every sample once, none missing
    assert (work / "generate" / "generations.jsonl").read_bytes() == reference["generations"]
    assert summary["counts"] == {k: v for k, v in reference["counts"].items()}
    assert summary["metrics"] == reference["metrics"]
    assert set(summary["status"].values()) == {"done"}


@pytest.mark.slow
def test_sigkill_during_generation_then_rerun(tiny_pretrained: Path, tmp_path: Path,
                                              reference: dict[str, Any]) -> None:
    work = tmp_path / "run"
    command = _command(tiny_pretrained, work)
    _kill_when(command, lambda: _lines(work / "generate" / "shards" / "rank0.jsonl") >= 20)
    state = json.loads((work / "manifest.json").read_text())["stages"]
    assert state["generate"]["status"] == "running" and "score" not in state
    rerun = _run(command)
    assert "generate: resuming" in rerun.stderr
    assert "samples to do (" in rerun.stderr and "(0 already done)" not in rerun.stderr.split("train")[0]
    _checked(work, reference)


@pytest.mark.slow
def test_sigkill_during_training_then_rerun(tiny_pretrained: Path, tmp_path: Path,
                                            reference: dict[str, Any]) -> None:
    work = tmp_path / "run"
    command = _command(tiny_pretrained, work)
    _kill_when(command, lambda: _lines(work / "train" / "metrics.jsonl") >= 5)
    state = json.loads((work / "manifest.json").read_text())["stages"]
    assert state["train"]["status"] == "running" and state["preprocess"]["status"] == "done"
    rerun = _run(command)
    assert "generate: skipped" in rerun.stderr and "train: resuming" in rerun.stderr
    _checked(work, reference)
