"""Run every benchmark and regenerate the results table at the top of docs/benchmarks.md.

Each benchmark is a script in this folder whose last line is ``ratio=<ours / reference>``.
This runs them one after another (``OMP_NUM_THREADS`` as set, default 1), keeps their full
output under ``--logs``, and rewrites the block between the ``run_all`` markers of
``docs/benchmarks.md`` with the machine, thread count, library versions and each ratio.
The prose sections below the table (how each was measured, what was tried) stay as they are.

    OMP_NUM_THREADS=1 python benchmarks/run_all.py [--quick] [--only generate_throughput ...]

``--quick`` runs each with small sizes (minutes instead of an hour; noisier ratios).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from megatron_detox.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"


@dataclass(frozen=True)
class Benchmark:
    script: str
    reference: str
    """What the ratio's denominator is."""
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("scoring_throughput.py", "achieved / configured Perspective QPS", (),
              ("--requests", "60", "--offline-texts", "1000")),
    Benchmark("peft_overhead.py", "adapter step / base step (overhead, lower is better)", ("--threads", "1"),
              ("--threads", "1", "--repeats", "3", "--warmup", "1")),
    Benchmark("generate_throughput.py", "ours / transformers generate, tokens/s", ("--repeats", "3"),
              ("--repeats", "1", "--new-tokens", "16")),
    Benchmark("train_throughput.py", "ours / transformers training loop, tokens/s", ("--steps", "3", "--rounds", "2"),
              ("--steps", "1", "--rounds", "1")),
    Benchmark("plan_calibration.py", "planner's predicted / measured train step time", ("--what", "train"),
              ("--what", "train", "--quick")),
    Benchmark("plan_calibration.py", "planner's predicted / measured decode time", ("--what", "decode"),
              ("--what", "decode", "--quick")),
    Benchmark("core_scaling.py", "two one-thread matmul processes / one alone (this machine's ceiling)",
              ("--processes", "2"), ("--processes", "2", "--seconds", "2")),
)


@dataclass(frozen=True)
class Result:
    benchmark: Benchmark
    command: str
    ratio: float | None
    seconds: float
    returncode: int


def parse_ratio(output: str) -> float | None:
    """The value of the last non-empty line if it reads ``ratio=<number>``."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return None
    match = re.fullmatch(r"ratio=([-+0-9.eE]+|nan|inf)", lines[-1])
    return float(match.group(1)) if match else None


def machine_summary() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text(encoding="utf-8", errors="replace"))
        if names:
            cpu = f"{names[0].strip()} x {len(names)}"
    versions = {}
    for package in ("torch", "transformers", "megatron-detox"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "python": platform.python_version(),
            "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
            **versions}


def render_table(results: list[Result], machine: dict[str, str], quick: bool, when: str) -> str:
    lines = [
        BEGIN,
        f"Last `benchmarks/run_all.py{' --quick' if quick else ''}`: {when}. Machine: {machine['cpu']}; "
        f"OMP_NUM_THREADS={machine['threads']}; load average {machine['load']}; Python {machine['python']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, "
        f"megatron-detox {machine['megatron-detox']}.",
        "",
        "| benchmark | command | ratio | reference | time |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        ratio = f"**{result.ratio:.3f}**" if result.ratio is not None else f"failed (exit {result.returncode})"
        lines.append(f"| {result.benchmark.script} | `{result.command}` | {ratio} | {result.benchmark.reference} | "
                     f"{result.seconds:.0f} s |")
    lines.append(END)
    return "\n".join(lines)


def update_document(text: str, table: str) -> str:
    """Replace the marked block, or put it right under the first heading."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + table + rest.split(END, 1)[1]
    lines = text.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    return "".join(lines[:at]) + "\n" + table + "\n" + "".join(lines[at:])


def run_benchmark(benchmark: Benchmark, quick: bool, logs: Path) -> Result:
    args = benchmark.quick_args if quick else benchmark.args
    command = ["python", f"benchmarks/{benchmark.script}", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, *command[1:]], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - began
    name = benchmark.script.removesuffix(".py") + ("_" + "_".join(a.lstrip("-") for a in args) if args else "")
    write_text_atomic(logs / f"{name}.log", proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    print(f"{' '.join(command)}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'no output'} "
          f"({seconds:.0f} s)", flush=True)
    return Result(benchmark, " ".join(command), parse_ratio(proc.stdout), seconds, proc.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes, noisier ratios")
    parser.add_argument("--only", nargs="*", help="script names (without .py) to run; default all")
    parser.add_argument("--logs", type=Path, default=HERE.parent / "runs" / "benchmarks")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.script.removesuffix(".py") in args.only]
    results = [run_benchmark(b, args.quick, args.logs) for b in chosen]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = render_table(results, machine_summary(), args.quick, when)
    write_text_atomic(args.doc, update_document(args.doc.read_text(encoding="utf-8"), table))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
