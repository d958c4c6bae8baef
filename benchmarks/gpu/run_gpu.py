"""GPU benchmarks, one script: training MFU of gpt-1.3b and generation tokens/s (ours vs transformers).

1. Training: gpt-1.3b (Megatron GPT, 24 layers, hidden 2048), random init, bf16 autocast over
   fp32 weights, full activation checkpointing, fused AdamW, synthetic tokens; TP1 on one
   GPU and, when two GPUs exist, TP2 (the script relaunches itself under ``torchrun``).
   MFU = model FLOPs per token (Megatron formula, no recomputation counted) x tokens/s over
   the GPU's bf16 dense peak (``plan.hardware``; a measured bf16 matmul peak when the GPU
   is not in that table).
2. Generation: SmolLM2-135M (the embedded weights) in bf16 on the GPU, loaded through the
   sharded loader; top-p 0.9 samples, every row ``--new-tokens`` long; our engine vs
   ``transformers``' ``generate`` on the same weights, same prompts.

    python benchmarks/gpu/run_gpu.py [--quick]

Last line: ``ratio=<our generation tokens/s / transformers'>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/generate_throughput.py's transformers builder


def bf16_peak_tflops() -> tuple[float, str]:
    """The GPU's dense bf16 peak from the planner's table, else a measured matmul peak."""
    from megatron_detox.plan.hardware import GPUS

    name = torch.cuda.get_device_name().lower()
    for key, device in GPUS.items():
        family = key.split("-")[0]  # "h100-80g" -> "h100"
        if family in name:
            return device.peak_tflops("bf16"), f"{key} spec"
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * 10 / (time.perf_counter() - start) / 1e12, "measured matmul"


def train_mfu(tp: int, batch: int, seq: int, steps: int) -> None:
    from megatron_detox.config import ParallelConfig
    from megatron_detox.models.presets import get_preset
    from megatron_detox.parallel.env import init_distributed
    from megatron_detox.parallel.model import build_parallel_model
    from megatron_detox.plan.flops import train_flops_per_token

    cfg = get_preset("gpt-1.3b").replace(max_position_embeddings=max(seq, 2048))
    parallel = ParallelConfig(tp=tp, activation_checkpointing="full")
    env = init_distributed(parallel, cfg, device="cuda")
    model = build_parallel_model(cfg, parallel, env, seed=1, micro_batch_size=batch, num_microbatches=1,
                                 precision="bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.forward_backward(tokens[:, :-1], tokens[:, 1:])
        optimizer.step()
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    step_time = sorted(times)[len(times) // 2]
    tokens_per_s = batch * seq / step_time
    peak, source = bf16_peak_tflops()
    achieved = train_flops_per_token(cfg, seq) * tokens_per_s / 1e12 / tp  # per GPU
    if env.rank == 0:
        print(f"train gpt-1.3b tp={tp} bf16 checkpointing=full batch={batch} seq={seq}: step {step_time * 1e3:.0f} ms, "
              f"{tokens_per_s:.0f} tokens/s, {achieved:.1f} TFLOP/s per GPU, MFU {achieved / peak:.3f} "
              f"(peak {peak:.0f} TFLOP/s, {source})", flush=True)


def generation(batch: int, prompt_len: int, new_tokens: int, repeats: int) -> float:
    from generate_throughput import build_hf

    from megatron_detox.generate.engine import generate_batch
    from megatron_detox.generate.sampling import SamplingParams
    from megatron_detox.inference import load_for_inference

    loaded = load_for_inference("smollm2-135m", device="cuda")  # dtype auto: bf16 on the GPU
    model, cfg = loaded.model, loaded.config
    hf = build_hf(model.float().cpu(), cfg).to("cuda", torch.bfloat16)
    model.to("cuda", torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen)
    params = SamplingParams(temperature=1.0, top_p=0.9)

    def ours() -> int:
        out = generate_batch(model, prompts.tolist(), list(range(batch)), params, max_new_tokens=new_tokens,
                             vocab_size=cfg.vocab_size, head_dim=cfg.head_dim, seed=1)
        return sum(len(g.tokens) for g in out)

    def theirs() -> int:
        with torch.inference_mode():
            ids = prompts.to("cuda")
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, top_k=0,
                              temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return int(out[:, prompt_len:].numel())

    rates = {}
    for name, fn in (("ours", ours), ("transformers", theirs)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            count = fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rates[name] = count / best
        print(f"generate smollm2-135m bf16 batch={batch} new_tokens={new_tokens} {name}: {rates[name]:.0f} tokens/s",
              flush=True)
    return rates["ours"] / rates["transformers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens (minutes)")
    parser.add_argument("--train-only-tp", type=int, help=argparse.SUPPRESS)  # the torchrun child
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu/run_gpu.py needs a CUDA device")
    steps, batch, seq = (3, 4, 1024) if args.quick else (10, 8, 2048)
    if args.train_only_tp:
        train_mfu(args.train_only_tp, batch, seq, steps)
        return
    print(f"gpu: {torch.cuda.get_device_name()} x {torch.cuda.device_count()}, torch {torch.__version__}", flush=True)
    train_mfu(1, batch, seq, steps)
    if torch.cuda.device_count() >= 2:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        __file__, "--train-only-tp", "2", *(["--quick"] if args.quick else [])],
                       check=True, env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    else:
        print("train tp=2: skipped (one GPU)", flush=True)
    ratio = generation(batch=32, prompt_len=16, new_tokens=64 if args.quick else 256, repeats=2 if args.quick else 3)
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
