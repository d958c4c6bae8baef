"""Accelerators the planner knows: memory, peak math rates, memory and link bandwidths.

Numbers are vendor datasheet values for the SXM parts (dense, no sparsity). Memory is
what ``nvidia-smi`` reports as total, in bytes; the planner leaves ``reserved_gb`` of it
for the CUDA context, NCCL buffers and allocator fragmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from megatron_detox.errors import UserError


@dataclass(frozen=True)
class Device:
    """One accelerator (or a CPU measured in place) as the planner models it."""

    name: str
    memory_gb: float
    """Total device memory, 1e9 bytes."""
    peak_tflops_16: float
    """Dense bf16/fp16 tensor-core peak, TFLOP/s."""
    peak_tflops_32: float
    """fp32 peak as PyTorch runs it by default (no TF32 for matmuls), TFLOP/s."""
    memory_bandwidth_gbs: float
    """HBM bandwidth, GB/s."""
    intra_node_gbs: float
    """Per-GPU, per-direction bandwidth inside a node (NVLink), GB/s."""
    inter_node_gbs: float
    """Per-GPU, per-direction bandwidth between nodes (InfiniBand), GB/s."""
    gpus_per_node: int = 8
    reserved_gb: float = 3.0
    """Memory the planner keeps free (CUDA context, NCCL buffers, fragmentation)."""

    def peak_tflops(self, precision: str) -> float:
        return self.peak_tflops_32 if precision == "fp32" else self.peak_tflops_16

    @property
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb


# A100 SXM4: 312 TFLOP/s bf16, 19.5 fp32, NVLink3 600 GB/s total (300 per direction), DGX A100
# 8 x 200 Gb/s HDR InfiniBand (25 GB/s per GPU). 40 GB: 1555 GB/s HBM2; 80 GB: 2039 GB/s HBM2e.
# H100 SXM5: 989 TFLOP/s bf16, 67 fp32, 3350 GB/s HBM3, NVLink4 900 GB/s total, 8 x 400 Gb/s NDR.
# H200 SXM: H100 compute with 141 GB HBM3e at 4800 GB/s.
GPUS: dict[str, Device] = {
    "a100-40g": Device("a100-40g", 42.9, 312.0, 19.5, 1555.0, 300.0, 25.0),
    "a100-80g": Device("a100-80g", 85.9, 312.0, 19.5, 2039.0, 300.0, 25.0),
    "h100-80g": Device("h100-80g", 85.5, 989.0, 67.0, 3350.0, 450.0, 50.0),
    "h200": Device("h200", 150.8, 989.0, 67.0, 4800.0, 450.0, 50.0),
}


def get_device(name: str) -> Device:
    if name not in GPUS:
        raise UserError(f"unknown GPU {name!r}; valid GPUs: {', '.join(GPUS)}")
    return GPUS[name]


def measure_cpu_device(matmul_size: int = 1024, copy_mib: int = 256, repeats: int = 3, clock: str = "wall") -> Device:
    """This machine's CPU as a one-'GPU' device: measured fp32 matmul rate and copy bandwidth.

    Used to calibrate the planner against the benchmarks that run here. ``clock="cpu"``
    times with process CPU time (with one thread: what an unshared core would take; a
    shared box's wall clock also counts the other processes). Takes ~1 s.
    """
    import torch  # noqa: PLC0415 - only the calibration needs torch

    now = time.process_time if clock == "cpu" else time.perf_counter
    a, b = torch.randn(matmul_size, matmul_size), torch.randn(matmul_size, matmul_size)
    a @ b
    best = min(_timed(lambda: a @ b, now) for _ in range(repeats))
    tflops = 2 * matmul_size**3 / max(best, 1e-9) / 1e12
    src = torch.empty(copy_mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy = min(_timed(lambda: dst.copy_(src), now) for _ in range(repeats))
    bandwidth = 2 * src.numel() * 4 / max(copy, 1e-9) / 1e9  # read + write
    return Device("cpu", memory_gb=1e6, peak_tflops_16=tflops, peak_tflops_32=tflops,
                  memory_bandwidth_gbs=bandwidth, intra_node_gbs=bandwidth, inter_node_gbs=bandwidth,
                  gpus_per_node=1, reserved_gb=0.0)


def with_rates(device: Device, tflops: float, bandwidth_gbs: float) -> Device:
    """A device with given math rate and memory bandwidth (e.g. numbers a benchmark measured)."""
    return replace(device, peak_tflops_16=tflops, peak_tflops_32=tflops, memory_bandwidth_gbs=bandwidth_gbs)


def _timed(fn: Callable[[], object], now: Callable[[], float]) -> float:
    began = now()
    fn()
    return now() - began
