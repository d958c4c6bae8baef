"""Decode attention at SGEAT cache lengths: head-major cache (ours) vs a slot-major one.

One decode step's attention for SmolLM2-135M's shapes (batch 32, 9 query heads sharing
3 key/value heads, head_dim 64) over 256, 512 and 1000 cached slots, with the per-row
key mask continuous batching needs (rows of different lengths). Ours reads keys from a
``[batch, kv_heads, slots, head_dim]`` buffer (the ``KVCache`` layout); the reference
reads the same keys through a ``[batch, slots, kv_heads, head_dim]`` buffer, the layout
before (and Hugging Face's ``DynamicCache`` is head-major too). Best of ``--repeats``,
alternating. Prints ms per layer and, last, ``ratio=<ours / reference>`` in attention
steps per second at the longest length (> 1: ours is faster).

    OMP_NUM_THREADS=1 python benchmarks/decode_attention.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, kv_heads, group, head_dim = args.batch, 3, 3, 64
    gen = torch.Generator().manual_seed(0)
    ratio = 0.0
    for length in (256, 512, 1000):
        q = torch.randn(batch, kv_heads, group, head_dim, generator=gen)  # grouped one-token queries
        head_major = torch.randn(batch, kv_heads, length + 64, head_dim, generator=gen)
        slot_major = head_major.transpose(1, 2).contiguous()  # same values, [batch, slots, kv_heads, head_dim]
        lengths = torch.randint(1, length, (batch,), generator=gen)
        lengths[0] = length - 1
        mask = (torch.arange(length)[None] <= lengths[:, None])[:, None, None, :]  # [batch, 1, 1, length]
        keys = {"ours": head_major[:, :, :length], "slot-major": slot_major[:, :length].transpose(1, 2)}
        torch.testing.assert_close(F.scaled_dot_product_attention(q, keys["ours"], keys["ours"], attn_mask=mask),
                                   F.scaled_dot_product_attention(q, keys["slot-major"], keys["slot-major"],
                                                                  attn_mask=mask))
        best = dict.fromkeys(keys, float("inf"))
        for _ in range(args.repeats):
            for name, k in keys.items():
                start = time.perf_counter()
                F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
                best[name] = min(best[name], time.perf_counter() - start)
        ratio = best["slot-major"] / best["ours"]
        print(f"slots={length} ours={best['ours'] * 1e3:.3f} ms/layer slot-major={best['slot-major'] * 1e3:.3f} "
              f"ms/layer x30 layers: {best['ours'] * 30e3:.1f} vs {best['slot-major'] * 30e3:.1f} ms per step")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
