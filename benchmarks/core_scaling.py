"""What a second core adds on this machine: one-thread fp32 matmul loops, one alone vs N at once.

Each process runs ``size``-cubed matmuls (256: in cache, so memory bandwidth barely
matters) on one thread for ``--seconds``. Run alone, then ``--processes`` of them at the
same time. The ceiling for any N-thread speed-up on this box, ours or a reference's, is
the printed ratio: N idle cores would give N.

    python benchmarks/core_scaling.py --processes 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import time


def gflops(size: int, seconds: float) -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(20):
        a @ b
    began, count = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - began) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        alone = pool.apply(gflops, (args.size, args.seconds))
    with context.Pool(args.processes) as pool:
        together = pool.starmap(gflops, [(args.size, args.seconds)] * args.processes)
    print(f"one process alone: {alone:.1f} GFLOP/s")
    print(f"{args.processes} at once: " + " + ".join(f"{g:.1f}" for g in together) + f" = {sum(together):.1f} GFLOP/s")
    print(f"ratio={sum(together) / alone:.3f}")


if __name__ == "__main__":
    main()
