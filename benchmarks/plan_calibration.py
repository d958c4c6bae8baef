"""Planner calibration: its predictions for this CPU against what our benchmarks measure here.

The planner models a device by its peak matmul rate and memory bandwidth. Here both are
measured on this CPU (fp32 2048^3 matmul, large copy), then the planner predicts, with its
default assumptions (matmuls at ``DEFAULT_EFFICIENCY`` of peak, decode reads at
``DEFAULT_BANDWIDTH_EFFICIENCY`` of bandwidth), for the embedded SmolLM2-135M:

- ``--what train``: one training step as ``benchmarks/train_throughput.py`` runs it (fp32,
  batch 4 x 256, AdamW, one process); measured = its megatron-detox tokens/s;
- ``--what decode``: the generation of ``benchmarks/generate_throughput.py`` (batch 32,
  16-token prompts, 64 new tokens, fp32, one thread); measured = our engine's best time.

Both benchmarks run as subprocesses (``--quick``: their smallest settings). Times are
process CPU seconds on both sides (peak and bandwidth measured on that clock, the benchmarks'
CPU times), so other processes on a shared box do not count. The last line is
``ratio=<predicted time / measured time>`` (1.0 = exact; < 1 the planner is optimistic).

    OMP_NUM_THREADS=1 python benchmarks/plan_calibration.py --what train [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from megatron_detox.models.presets import get_preset
from megatron_detox.plan.estimate import plan_training
from megatron_detox.plan.hardware import measure_cpu_device
from megatron_detox.plan.layout import Layout
from megatron_detox.plan.sgeat import estimate_generation

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True)
    print(proc.stdout, end="", flush=True)
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("train", "decode"), default="train")
    parser.add_argument("--quick", action="store_true", help="the benchmark's smallest settings")
    args = parser.parse_args()
    cfg = get_preset("smollm2-135m")
    device = measure_cpu_device(matmul_size=2048, clock="cpu")
    print(f"cpu device: matmul {device.peak_tflops_32:.3f} TFLOP/s, copy bandwidth "
          f"{device.memory_bandwidth_gbs:.1f} GB/s", flush=True)
    if args.what == "train":
        batch, seq = 4, 256
        steps = ("--steps", "1", "--rounds", "1") if args.quick else ("--steps", "3", "--rounds", "2")
        text = run("train_throughput.py", "--batch", str(batch), "--seq", str(seq), *steps)
        # "megatron-detox: tokens_per_s=86.9 tflops=..." (the mean over rounds)
        ours = next(line for line in text.splitlines() if line.startswith("megatron-detox: tokens_per_s="))
        measured = batch * seq / float(ours.split("tokens_per_s=")[1].split()[0])
        layout = Layout(gpus=1, seq_length=seq, global_batch=batch, micro_batch=batch, precision="fp32")
        predicted = plan_training(cfg, layout, device).step_time_s
        what = "train step"
    else:
        batch, prompt, new = 32, 16, 64
        repeats = "1" if args.quick else "3"
        text = run("generate_throughput.py", "--batch-size", str(batch), "--prompt-len", str(prompt),
                   "--new-tokens", str(new), "--repeats", repeats)
        ours = next(line for line in text.splitlines() if line.startswith("ours:"))
        measured = float(ours.split(" s wall (")[1].split(" s CPU")[0])  # "... 12.18 s wall (12.10 s CPU) ..."
        predicted = estimate_generation(cfg, device, gpus=1, tp=1, precision="fp32", samples=batch,
                                        new_tokens=new, prompt_tokens=prompt, batch_size=batch).total_s
        what = f"generation of {batch} x {new} tokens"
    print(f"{what}: predicted {predicted:.3f} s, measured {measured:.3f} s")
    print(f"ratio={predicted / measured:.3f}")


if __name__ == "__main__":
    main()
