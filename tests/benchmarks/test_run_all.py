"""benchmarks/run_all.py: ratio parsing and the regenerated table of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


# What the benchmarks print (trimmed from real runs).
GENERATE_OUTPUT = """cpu_decode_linears=True (setup 0.17 s, once per run)
ours: 2048 tokens in 12.18 s wall (12.10 s CPU) = 168.1 tokens/s
transformers: 2048 tokens in 25.10 s wall (25.01 s CPU) = 81.6 tokens/s
cpu_time_ratio=2.060 prompts=text
threads=1 weights=513 MiB kv/step=2.5 MiB step=190.3 ms copy_bandwidth=18.1 GB/s roofline_fraction=0.177
ratio=2.061
"""
TRAIN_OUTPUT = "transformers: tokens_per_s=84.2\nmegatron-detox: tokens_per_s=86.9\nratio=1.032\n\n"
BROKEN_OUTPUT = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"


def test_parse_ratio_reads_only_a_last_ratio_line() -> None:
    run_all = load_run_all()
    assert run_all.parse_ratio(GENERATE_OUTPUT) == 2.061
    assert run_all.parse_ratio(TRAIN_OUTPUT) == 1.032
    assert run_all.parse_ratio(BROKEN_OUTPUT) is None
    assert run_all.parse_ratio("ratio=1.5\nsomething after\n") is None
    assert run_all.parse_ratio("") is None


def test_table_is_written_under_the_heading_then_replaced_in_place() -> None:
    run_all = load_run_all()
    by_script = {b.script: b for b in run_all.BENCHMARKS}
    results = [
        run_all.Result(by_script["generate_throughput.py"], "python benchmarks/generate_throughput.py --repeats 3",
                       run_all.parse_ratio(GENERATE_OUTPUT), 95.0, 0),
        run_all.Result(by_script["train_throughput.py"], "python benchmarks/train_throughput.py",
                       run_all.parse_ratio(BROKEN_OUTPUT), 3.0, 1),
    ]
    machine = {"cpu": "AMD EPYC x 2", "python": "3.11.9", "threads": "1", "load": "1.0 2.0 3.0",
               "torch": "2.13.0", "transformers": "5.12.1", "megatron-detox": "0.1.0"}
    table = run_all.render_table(results, machine, quick=True, when="2026-12-03 11:00 UTC")
    assert "| generate_throughput.py | `python benchmarks/generate_throughput.py --repeats 3` | **2.061** |" in table
    assert "| train_throughput.py |" in table and "failed (exit 1)" in table
    assert "run_all.py --quick`: 2026-12-03 11:00 UTC" in table and "OMP_NUM_THREADS=1" in table
    assert "torch 2.13.0, transformers 5.12.1" in table

    doc = "# Benchmarks\n\n## Scoring\n\nprose stays\n"
    once = run_all.update_document(doc, table)
    assert once.startswith("# Benchmarks\n\n" + run_all.BEGIN)
    assert once.endswith("## Scoring\n\nprose stays\n")
    newer = table.replace("**2.061**", "**2.100**")
    twice = run_all.update_document(once, newer)
    assert twice.count(run_all.BEGIN) == 1 and "**2.100**" in twice and "**2.061**" not in twice
    assert twice.endswith("## Scoring\n\nprose stays\n")


def test_every_listed_script_exists() -> None:
    run_all = load_run_all()
    for benchmark in run_all.BENCHMARKS:
        assert (REPO / "benchmarks" / benchmark.script).is_file()
