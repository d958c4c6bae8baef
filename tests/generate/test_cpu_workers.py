"""One-thread worker processes on CPU: same texts as one process, every id once, errors surface."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from megatron_detox.errors import UserError
from megatron_detox.generate.cpu_workers import SharedQueue, resolve_cpu_workers, run_in_workers
from megatron_detox.generate.prompts import prompt_items
from megatron_detox.generate.stage import run_generation_stage
from tests.generate.test_stage import PROMPTS, load, read


@pytest.fixture
def threads() -> Iterator[None]:
    """Two torch threads in this process (what auto workers follow), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_resolve_cpu_workers(threads: None) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cpu_workers(0, cpu, single_process=True, eager=True, num_items=100) == 2  # one per thread
    assert resolve_cpu_workers(8, cpu, single_process=True, eager=True, num_items=100) == 2  # at most the threads
    assert resolve_cpu_workers(0, cpu, single_process=True, eager=True, num_items=1) == 1
    assert resolve_cpu_workers(1, cpu, single_process=True, eager=True, num_items=100) == 1
    assert resolve_cpu_workers(0, cpu, single_process=False, eager=True, num_items=100) == 1  # torchrun: its ranks
    assert resolve_cpu_workers(0, cpu, single_process=True, eager=False, num_items=100) == 1  # compiled step
    assert resolve_cpu_workers(0, cuda, single_process=True, eager=True, num_items=100) == 1
    with pytest.raises(UserError, match="cpu_workers=-1"):
        resolve_cpu_workers(-1, cpu, single_process=True, eager=True, num_items=100)


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_workers_give_the_texts_of_one_process(tmp_path: Path, tiny_hf_folder: Path, batch_size: int,
                                               threads: None) -> None:
    model, tokenizer, spec = load(str(tiny_hf_folder))
    # One token in 8 ends a sample: rows finish at different steps, and new ids enter the freed rows.
    spec = dataclasses.replace(spec, stop_ids=tuple(range(0, spec.vocab_size, 8)))
    items = prompt_items(PROMPTS, repeat=5)  # 20 ids

    def go(out: Path, workers: int) -> list[dict]:  # type: ignore[type-arg]
        run_generation_stage(model, tokenizer, items, out, spec, settings={"seed": 11}, batch_size=batch_size,
                             progress=False, cpu_workers=workers)
        return read(out)

    torch.set_num_threads(1)  # the reference: this process on the one-thread decode path the workers take
    one = go(tmp_path / "one", 1)
    torch.set_num_threads(2)
    two = go(tmp_path / "two", 0)
    assert [r["id"] for r in two] == list(range(20))
    assert two == one
    assert {r["finish_reason"] for r in one} == {"eos", "length"}
    assert len({r["num_tokens"] for r in one}) > 4
    shards = tmp_path / "two" / "shards"
    lines = {rank: [json.loads(x)["id"] for x in (shards / f"rank{rank}.jsonl").read_text().splitlines()]
             for rank in (0, 1)}
    assert sorted(lines[0] + lines[1]) == list(range(20))  # no id lost or written twice
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["dp_size"] == 2


def test_workers_resume_what_one_process_started(tmp_path: Path, tiny_hf_folder: Path, threads: None) -> None:
    model, tokenizer, spec = load(str(tiny_hf_folder))
    items = prompt_items(PROMPTS, repeat=3)
    out = tmp_path / "resumed"
    torch.set_num_threads(1)
    run_generation_stage(model, tokenizer, items[:5], out, spec, settings={}, batch_size=3, progress=False)
    straight = tmp_path / "straight"
    run_generation_stage(model, tokenizer, items, straight, spec, settings={}, batch_size=3, progress=False)
    torch.set_num_threads(2)
    run_generation_stage(model, tokenizer, items, out, spec, settings={}, batch_size=3, progress=False)
    assert read(out) == read(straight)
    shards = [[json.loads(x)["id"] for x in path.read_text().splitlines()]
              for path in sorted((out / "shards").glob("rank*.jsonl"))]
    assert sorted(i for shard in shards for i in shard) == list(range(12))  # the rerun did only what was missing
    assert shards[0][:5] == [0, 1, 2, 3, 4]


def test_shared_queue_hands_out_each_item_once(threads: None) -> None:
    queue = SharedQueue(list(range(1000)))

    def drain(worker: int) -> list[int]:
        taken: list[int] = []
        while queue:
            taken += queue.take(3)
        return taken

    parts = run_in_workers(2, drain)
    assert sorted(parts[0] + parts[1]) == list(range(1000))
    assert not queue and queue.take(5) == []


def _fail_user(index: int) -> int:
    if index == 1:
        raise UserError("shard.jsonl:3: a user mistake")
    time.sleep(60)  # must be stopped by the parent, not waited for
    return index


def _fail_bug(index: int) -> int:
    if index == 0:
        raise ValueError("a bug")
    return index


def _die(index: int) -> int:
    os._exit(3)


def test_run_in_workers_results_and_errors(threads: None) -> None:
    assert run_in_workers(3, lambda i: (i, torch.get_num_threads())) == [(0, 1), (1, 1), (2, 1)]
    began = time.monotonic()
    with pytest.raises(UserError, match=r"^shard.jsonl:3: a user mistake$"):
        run_in_workers(2, _fail_user)
    assert time.monotonic() - began < 30  # the sleeping worker was terminated
    with pytest.raises(RuntimeError, match="generation worker 0 failed:(.|\n)*ValueError: a bug"):
        run_in_workers(2, _fail_bug)
    with pytest.raises(RuntimeError, match="generation worker . died"):
        run_in_workers(2, _die)


def test_cpu_workers_option_takes_effect(tmp_path: Path, tiny_hf_folder: Path, threads: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_detox.cli import main
    from megatron_detox.config import ConfigError, load_config

    def dp_size(*extra: str) -> int:
        out = tmp_path / "-".join(extra or ("default",))
        assert main(["generate", "--model", str(tiny_hf_folder), "--unconditional", "6", "--max-new-tokens", "4",
                     "--out", str(out), "--no-progress", *extra]) == 0
        return int(json.loads((out / "manifest.json").read_text())["dp_size"])

    assert dp_size() == 2 and dp_size("--cpu-workers", "1") == 1
    config = tmp_path / "run.yaml"
    config.write_text("generate:\n  cpu_workers: 1\n")
    assert dp_size("--config", str(config)) == 1
    assert main(["generate", "--model", str(tiny_hf_folder), "--unconditional", "2", "--out", str(tmp_path / "x"),
                 "--cpu-workers", "-1"]) == 2
    assert "--cpu-workers=-1: must be >= 0" in capsys.readouterr().err
    for section in ("generate", "eval"):
        with pytest.raises(ConfigError, match=f"{section}.cpu_workers"):
            load_config(None, [f"{section}.cpu_workers=-1"])
