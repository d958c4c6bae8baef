"""Training throughput: our trainer vs a plain ``transformers`` loop, SmolLM2-135M, fp32, AdamW.

Both train the same architecture (random init) on the same token batches (4 x 256 from
WikiText-2 through our megatron-core data pipeline), with the same AdamW settings, clip
and thread count, in this one run. Ours is the real ``train(cfg)`` (data, LR schedule,
metrics, a final checkpoint that is not timed); its per-step time comes from
``metrics.jsonl``. The reference loop is ``model(input_ids, labels=...)`` → backward →
clip → ``torch.optim.AdamW.step``. The first ``--warmup`` steps of each are not timed.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --steps 3 --rounds 2

``--clock cpu`` (default) counts process CPU seconds instead of wall seconds: on a
shared box wall time also measures the other processes (with one thread the two agree
on an idle machine). Prints tokens/s for both, the fraction of this machine's measured fp32 matmul peak
(achieved model TFLOP/s from the Megatron formula / matmul TFLOP/s), and last
``ratio=<ours / transformers>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from megatron_detox.config import load_config
from megatron_detox.data import build_gpt_datasets, parse_blend, preprocess_text_files, sample_batch
from megatron_detox.models.hf_keys import config_to_hf
from megatron_detox.models.presets import get_preset
from megatron_detox.train import train
from megatron_detox.train.metrics import read_metrics, train_flops_per_token
from megatron_detox.train.setup import resolve_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEGATRON_DETOX_DATA", REPO.parent / "shared" / "data"))
TEXT = DATA / "lm_text" / "wikitext2_tok_valid.txt"


def matmul_peak_tflops(clock: str, size: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` fp32 ``size``-cubed matmuls, on the same clock as the training loops."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = now()
        a @ b
        best = min(best, now() - began)
    return 2 * size**3 / best / 1e12


def run_ours(work: Path, args: argparse.Namespace) -> float:
    overrides = [
        "model.preset=smollm2-135m", f"data.text_files=[{TEXT}]", f"data.seq_length={args.seq}",
        "data.split=99,1,0", f"data.cache_dir={work.parent / 'data'}", f"train.run_dir={work / 'ours'}",
        f"train.steps={args.warmup + args.steps}", f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", "train.precision=fp32", "optim.schedule=constant",
        "optim.lr=3e-4", "optim.clip_grad=1.0", f"parallel.compile={str(args.compile).lower()}",
    ]
    train(load_config(None, overrides), progress=False)
    records = read_metrics(work / "ours" / "metrics.jsonl")[args.warmup:]
    shutil.rmtree(work / "ours")  # the final checkpoint is ~1.6 GB
    tokens = args.batch * args.seq
    if args.clock == "cpu":
        return tokens * len(records) / sum(r["cpu_s"] for r in records)
    return tokens * len(records) / sum(tokens / r["tokens_per_s"] for r in records)


def run_reference(work: Path, args: argparse.Namespace) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    cfg = load_config(None, ["model.preset=smollm2-135m", f"data.seq_length={args.seq}"])
    model_cfg = cfg.model.to_model_config()
    tokenizer = resolve_tokenizer(cfg, model_cfg)
    prefixes = preprocess_text_files([str(TEXT)], tokenizer, "text", work / "data", progress=False)
    dataset = build_gpt_datasets(parse_blend(prefixes), tokenizer, seq_length=args.seq, seed=cfg.train.seed,
                                 split="99,1,0", num_samples=((args.warmup + args.steps) * args.batch, 0, 0),
                                 cache_dir=work / "data" / "indices")[0]
    hf_cfg = {k: v for k, v in config_to_hf(get_preset("smollm2-135m")).items() if k not in ("architectures",
                                                                                           "model_type")}
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    times = []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for step in range(args.warmup + args.steps):
        began = clock()
        batch = sample_batch(dataset, step * args.batch, args.batch)
        loss = model(input_ids=batch["tokens"], labels=batch["tokens"]).loss  # HF shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(clock() - began)
    return args.batch * args.seq * args.steps / sum(times[args.warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: tokens per process-CPU-second (use with OMP_NUM_THREADS=1 on a shared box, where "
                             "wall time also measures other processes); wall: tokens per second of wall time")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each, in alternating order")
    parser.add_argument("--compile", action="store_true", help="torch.compile our blocks (parallel.compile)")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak_tflops(args.clock)
    flops_per_token = train_flops_per_token(get_preset("smollm2-135m"), args.seq)
    print(f"threads={torch.get_num_threads()} clock={args.clock} matmul_peak_tflops={peak:.3f} "
          f"batch={args.batch}x{args.seq} timed_steps={args.steps}")
    results: dict[str, list[float]] = {"transformers": [], "megatron-detox": []}
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        work = Path(tmp)
        # Rounds alternate the order (ABBA...), so load from other processes on a shared
        # machine does not favour whichever loop runs first.
        for round_index in range(args.rounds):
            order = ["transformers", "megatron-detox"]
            for name in order if round_index % 2 == 0 else order[::-1]:
                began = time.perf_counter()
                cpu = time.process_time()
                if name == "transformers":
                    tps = run_reference(work, args)
                else:
                    tps = run_ours(work / f"round{round_index}", args)
                busy = (time.process_time() - cpu) / (time.perf_counter() - began) / torch.get_num_threads()
                results[name].append(tps)
                print(f"round {round_index} {name}: tokens_per_s={tps:.1f} (cpu busy {busy:.0%})", flush=True)
    mean = {name: sum(values) / len(values) for name, values in results.items()}
    for name, tps in mean.items():
        achieved = tps * flops_per_token / 1e12
        print(f"{name}: tokens_per_s={tps:.1f} tflops={achieved:.3f} fraction_of_matmul_peak={achieved / peak:.3f}")
    print(f"ratio={mean['megatron-detox'] / mean['transformers']:.3f}")


if __name__ == "__main__":
    main()
