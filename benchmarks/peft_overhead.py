"""Step-time overhead of bottleneck adapters on SmolLM2-135M (forward + backward).

Compares the same model with and without adapters (both placements, every layer),
same batch, same thread count, every parameter requiring grad in both so the only
difference is the adapter compute. Steps are interleaved (base, adapted, base, ...)
so load changes on a shared machine hit both alike. The ratio uses the fastest step of
each variant (contention only ever adds time); medians are printed too.

Also reported (informational): the PEFT training step actually used (frozen base +
adapters) against a full fine-tuning step, and, with ``--compile``, adapters whose
down -> act -> up -> residual chain is one ``torch.compile`` region.

Weights are random (``models.init``): step time does not depend on their values, and it
avoids dequantizing the GGUF. The LAST line is ``ratio=<adapted / base>`` (eager).

    OMP_NUM_THREADS=1 python benchmarks/peft_overhead.py --threads 1 --compile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from megatron_detox.config import AdapterConfig, PeftConfig
from megatron_detox.models import Transformer, get_preset
from megatron_detox.models.init import init_weights
from megatron_detox.peft import apply_adapters, apply_peft, trainable_parameters


def step_fn(model: Transformer, tokens: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        logits = model(tokens[:, :-1])  # [batch, seq, vocab]
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed(step))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--bottleneck", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time compiled (fused) adapters")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = get_preset("smollm2-135m")
    base = Transformer(cfg)
    init_weights(base, cfg, seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
    adapter_cfg = AdapterConfig(bottleneck=args.bottleneck, init_std=0.01)
    adapted = apply_adapters(copy.deepcopy(base), cfg, adapter_cfg, seed=0)  # base params still trainable
    peft = apply_peft(copy.deepcopy(base), cfg, "adapter", PeftConfig(adapter=adapter_cfg), seed=0)
    steps = {"base": step_fn(base, tokens), "adapters": step_fn(adapted, tokens),
             "peft (frozen base)": step_fn(peft, tokens)}
    if args.compile:
        fused = apply_adapters(copy.deepcopy(base), cfg, adapter_cfg, seed=0, compile=True)
        steps["adapters compiled"] = step_fn(fused, tokens)
    print(f"smollm2-135m  batch={args.batch} seq={args.seq} bottleneck={args.bottleneck} "
          f"threads={args.threads} repeats={args.repeats}  torch {torch.__version__}")
    print(f"trainable with adapters: {sum(p.numel() for p in trainable_parameters(peft)):,} of "
          f"{sum(p.numel() for p in peft.parameters()):,}")
    samples = interleaved(steps, args.repeats, args.warmup)
    best = {name: min(values) for name, values in samples.items()}
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<20} min {best[name] * 1000:8.1f} ms  median {median * 1000:8.1f} ms  "
              f"min x{best[name] / best['base']:.3f} of base")
    print(f"ratio={best['adapters'] / best['base']:.4f}")


if __name__ == "__main__":
    main()
