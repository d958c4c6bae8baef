"""``megatron-detox generate``: bad input exits 2 with one line; kill -9 + rerun is exactly-once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_detox.cli import main

REPO = Path(__file__).resolve().parents[2]


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["generate", "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("content", "words"), [
    (b'{"prompt": {"text": "a"}}\n{"prompt": \n', "prompts.jsonl:2: malformed JSON"),
    (b'{"prompt": {"text": "a"}}\n{"text": "b"}\n', "prompts.jsonl:2: field 'prompt.text' is missing"),
    (b'{"prompt": {"text": ""}}\n', "prompts.jsonl:1: field 'prompt.text' is an empty prompt"),
    (b'{"prompt": {"text": "\xc3\x28"}}\n', "prompts.jsonl:1: not valid UTF-8"),
])
def test_bad_prompt_file_exits_2_with_one_line(tmp_path: Path, tiny_hf_folder: Path, content: bytes, words: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(content)
    code, _, err = cli(["--model", str(tiny_hf_folder), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                        "--max-new-tokens", "8"],
                       capsys)
    assert code == 2
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_num_prompts_takes_the_first_prompts(tmp_path: Path, tiny_hf_folder: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in ("The cat", "A fox", "Paris")))
    out = tmp_path / "o"
    code, _, _ = cli(["--model", str(tiny_hf_folder), "--prompts", str(prompts), "--out", str(out),
                      "--max-new-tokens", "4", "--repeat", "2", "--num-prompts", "2"], capsys)
    assert code == 0
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["The cat", "The cat", "A fox", "A fox"]
    code, _, err = cli(["--model", str(tiny_hf_folder), "--prompts", str(prompts), "--out", str(tmp_path / "x"),
                        "--num-prompts", "-1"], capsys)
    assert code == 2 and "--num-prompts=-1: must be >= 0" in err


def test_max_new_tokens_beyond_context_refused_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import megatron_detox.models.loading as loading

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    code, _, err = cli(["--model", "smollm2-135m", "--prompt", "Hi", "--max-new-tokens", "9000"], capsys)
    assert code == 2 and "--max-new-tokens=9000: the model context is 8192 tokens" in err


def test_prompt_prints_continuation(tiny_hf_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["--model", str(tiny_hf_folder), "--prompt", "The capital", "--max-new-tokens", "5",
                        "--greedy"], capsys)
    assert code == 0 and out.startswith("The capital") and len(out) > len("The capital\n")


def _command(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "megatron_detox", "generate", "--model", str(model), "--unconditional", "100",
            "--max-new-tokens", "16", "--batch-size", "2", "--seed", "3", "--top-p", "0.9", "--out", str(out),
            "--no-progress"]


def _lines(folder: Path, pattern: str) -> list[bytes]:
    return [line for path in sorted(folder.glob(pattern)) for line in path.read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")]


@pytest.mark.parametrize(("threads", "workers"), [("1", "1"), ("2", "2")], ids=["one-process", "cpu-workers"])
def test_sigkill_and_rerun_is_exactly_once(tmp_path: Path, tiny_hf_folder: Path, threads: str, workers: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    command = [*_command(tiny_hf_folder, tmp_path / "killed"), "--cpu-workers", workers]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_lines(killed, "shards/rank*.jsonl")) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(_lines(killed, "shards/rank*.jsonl"))
    time.sleep(1.0)  # workers die with their parent: nothing is appended after the kill
    assert len(_lines(killed, "shards/rank*.jsonl")) == done_before
    metric_lines = len(_lines(killed, "metrics/rank*.jsonl"))
    assert 10 <= done_before < 100
    assert not (killed / "generations.jsonl").exists()

    for out in (killed, tmp_path / "straight"):
        result = subprocess.run([*_command(tiny_hf_folder, out), "--cpu-workers", workers], cwd=REPO, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    resumed = (killed / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    straight = (tmp_path / "straight" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in resumed] == list(range(100))
    assert resumed == straight
    # The rerun generated exactly what was missing.
    rerun_samples = sum(json.loads(m)["samples"] for m in _lines(killed, "metrics/rank*.jsonl")[metric_lines:])
    assert rerun_samples == 100 - done_before and len(_lines(killed, "shards/rank*.jsonl")) == 100


def test_checkpoint_of_ours_generates_like_its_source(tmp_path: Path, tiny_hf_folder: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from megatron_detox.models.loading import load_model
    from megatron_detox.train.checkpoint import model_shape, save_checkpoint

    model, cfg = load_model(str(tiny_hf_folder))
    meta = {"model": model_shape(cfg), "model_config": dataclasses.asdict(cfg), "method": "full"}
    save_checkpoint(tmp_path / "run", 3, {"model": model.state_dict()}, meta, rank=0, keep_last=1)
    common = ["--prompt", "The capital", "--max-new-tokens", "6", "--top-p", "0.9", "--seed", "2"]
    code, from_hf, _ = cli(["--model", str(tiny_hf_folder), *common], capsys)
    assert code == 0
    code, from_ckpt, err = cli(["--checkpoint", str(tmp_path / "run"), "--tokenizer",
                                str(tiny_hf_folder / "tokenizer.json"), *common], capsys)
    assert code == 0, err
    assert from_ckpt == from_hf
