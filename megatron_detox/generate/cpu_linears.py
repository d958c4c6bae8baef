"""Decode-step linears on CPU: numpy's BLAS on K-major copies of the weights.

On one CPU core a decode step of SmolLM2 at batch 32 is ~75 % GEMMs of 32 rows against
weights that no longer sit in cache (513 MiB read per step). For those shapes OpenBLAS
(the BLAS numpy ships) on a K-major (``[in, out]``) copy of each weight is faster than
MKL (torch) on the ``[out, in]`` weight: 0.80 vs 0.94 ms for a 576 -> 1536 projection,
~8 ms of a ~190 ms step end to end. Neither MKL on the transposed copy, MKL's packed
API nor oneDNN's blocked layout matched it (``docs/benchmarks.md``).

:class:`CpuDecodeLinears` applies this for the duration of a generation run: inputs of
up to ``DECODE_MAX_ROWS`` rows (decode steps) take the numpy path, larger ones
(prefill: MKL runs those at peak) and anything with autograd stay on torch. It costs
one copy of the block weights while entered.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, TypeGuard

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECODE_MAX_ROWS = 256


def plain_cpu_linear(module: nn.Module | None) -> TypeGuard[nn.Linear]:
    """An ``nn.Linear`` (not a subclass) without forward hooks whose weight is a local
    CPU tensor: the layers the CPU fast paths may run themselves. DTensor shards, hooked
    layers and accelerators keep the layer's own forward."""
    return (
        type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and not hasattr(module.weight, "to_local")
        and not (module._forward_hooks or module._forward_pre_hooks)
    )


class WeightVersion:
    """The weight a derived copy was made from: the tensor and its in-place version."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.version = weight._version

    def matches(self, weight: Tensor) -> bool:
        """False once the weight is replaced or changed in place: the copy is stale."""
        return weight is self.weight and weight._version == self.version


class _KMajorForward:
    """The forward of one ``nn.Linear`` while :class:`CpuDecodeLinears` is entered."""

    def __init__(self, module: nn.Linear) -> None:
        self.module = module
        self.weight_k = module.weight.detach().t().contiguous().numpy()  # [in, out]
        self.source = WeightVersion(module.weight)

    def __call__(self, x: Tensor) -> Tensor:
        module = self.module
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if (rows > DECODE_MAX_ROWS or x.dtype != torch.float32 or x.requires_grad or x.device.type != "cpu"
                or not self.source.matches(module.weight)):
            return F.linear(x, module.weight, module.bias)
        flat = x.reshape(rows, x.shape[-1]).contiguous()
        out = flat.new_empty(rows, self.weight_k.shape[1])
        np.matmul(flat.numpy(), self.weight_k, out=out.numpy())
        if module.bias is not None:
            out += module.bias
        return out.view(*x.shape[:-1], out.shape[-1])


class CpuDecodeLinears:
    """Context manager: eligible linears of ``model`` (plain fp32 ``nn.Linear`` on CPU,
    not ``exclude``) run small inputs through numpy's BLAS on K-major weights.

    A weight changed in place or replaced while entered is noticed and served by torch.
    numpy's BLAS gets torch's thread count for the duration.
    """

    def __init__(self, model: Any, exclude: tuple[nn.Module | None, ...] = ()) -> None:
        self.modules = [m for m in model.modules() if plain_cpu_linear(m) and m.weight.dtype == torch.float32
                        and not any(m is e for e in exclude)]
        self._limits: contextlib.ExitStack | None = None

    def __enter__(self) -> CpuDecodeLinears:
        self._limits = contextlib.ExitStack()
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # then numpy's BLAS keeps its own thread count
            pass
        else:
            self._limits.enter_context(threadpool_limits(limits=torch.get_num_threads(), user_api="blas"))
        for module in self.modules:
            module.forward = _KMajorForward(module)  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)  # the class's forward again
        if self._limits is not None:
            self._limits.close()
            self._limits = None
