"""Decode attention at SGEAT cache lengths: row by row (ours at one thread) vs one masked call.

One decode step's attention for SmolLM2-135M's shapes (batch 32, 9 query heads sharing
3 key/value heads, head_dim 64) over 256, 512 and 1000 cached slots, with rows of
different lengths spread evenly up to the longest, as continuous batching keeps them.
Three ways, best of ``--repeats`` each, alternating:

- ``by-row``: what the engine runs on one CPU thread when rows differ enough
  (``models.gpt.decode_attention_by_row``): one call per row over its own slots only;
- ``masked``: one call over the longest row's slots of the head-major cache
  (``[batch, kv_heads, slots, head_dim]``) with a per-row key mask, the engine's path at
  more threads;
- ``slot-major``: the same masked call through a ``[batch, slots, kv_heads, head_dim]``
  buffer, the cache layout before.

Prints ms per layer and, last, ``ratio=<masked / by-row>`` in time per step at the
longest length (> 1: row by row is faster; ``masked / slot-major`` is printed above it).

    OMP_NUM_THREADS=1 python benchmarks/decode_attention.py [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from megatron_detox.models.gpt import decode_attention_by_row


def time_ways(length: int, batch: int, repeats: int, clock: str, gen: torch.Generator) -> dict[str, float]:
    """Best seconds per layer of each way at ``length`` slots (rows spread up to it)."""
    kv_heads, group, head_dim = 3, 3, 64
    q = torch.randn(batch, kv_heads, group, head_dim, generator=gen)  # grouped one-token queries
    head_major = torch.randn(batch, kv_heads, length + 64, head_dim, generator=gen)
    slot_major = head_major.transpose(1, 2).contiguous()  # same values, [batch, slots, kv_heads, head_dim]
    lengths = torch.randint(1, length, (batch,), generator=gen)
    lengths[0] = length - 1
    attend = (lengths + 1).tolist()
    mask = (torch.arange(length)[None] <= lengths[:, None])[:, None, None, :]  # [batch, 1, 1, length]
    ours, before = head_major[:, :, :length], slot_major[:, :length].transpose(1, 2)
    ways = {
        "by-row": lambda: decode_attention_by_row(q, head_major, head_major, attend),
        "masked": lambda: F.scaled_dot_product_attention(q, ours, ours, attn_mask=mask),
        "slot-major": lambda: F.scaled_dot_product_attention(q, before, before, attn_mask=mask),
    }
    reference = ways["masked"]()
    for name, way in ways.items():
        torch.testing.assert_close(way(), reference, msg=name)
    now = time.process_time if clock == "cpu" else time.perf_counter
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for name, way in ways.items():
            start = now()
            way()
            best[name] = min(best[name], now() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (a shared box's wall clock also counts other processes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    best: dict[str, float] = {}
    for length in (256, 512, 1000):
        best = time_ways(length, args.batch, args.repeats, args.clock, gen)
        print(f"slots={length} " + " ".join(f"{name}={seconds * 1e3:.3f}" for name, seconds in best.items())
              + " ms/layer; x30 layers: " + " ".join(f"{seconds * 30e3:.1f}" for seconds in best.values())
              + " ms per step")
    print(f"slot_major_ratio={best['slot-major'] / best['masked']:.3f} (masked head-major vs slot-major)")
    print(f"ratio={best['masked'] / best['by-row']:.3f}")


if __name__ == "__main__":
    main()
