"""Decode-step linears on CPU: weights copied once into the layout the fastest BLAS wants.

A CPU decode step at batch 16-32 is mostly GEMMs of a few rows against weights that no
longer sit in cache (SmolLM2: 513 MiB read per step). torch's default (MKL on the
``[out, in]`` weight) repacks every weight on every call, and on AMD CPUs runs AVX2 code.
Two paths beat it, each on its own kind of machine (``docs/benchmarks.md``):

- ``onednn``: the weight reordered once into oneDNN's blocked layout and run by oneDNN's
  own AVX-512 kernels. On an AVX-512 CPU (AMD EPYC, session 8) it took SmolLM2's short
  generation benchmark from 1.8x to 3.0x ``transformers`` at two threads, and it runs at
  any thread count (torch's own OpenMP pool).
- ``numpy``: OpenBLAS (numpy's BLAS) on a K-major (``[in, out]``) copy. On the AVX2 machine
  of sessions 1-7 it beat MKL by ~15 % and oneDNN's blocked layout did not match it; one
  thread only (OpenBLAS's pthreads and torch's OpenMP workers spin against each other:
  0.24x at two threads).

:func:`decode_backend` picks by the CPU's vector ISA, so a machine always takes the same
path (a sampled token may flip between paths: they round differently). Inputs of up to
``DECODE_MAX_ROWS`` rows (decode steps) take it; larger ones (prefill: MKL runs those at
peak) and anything with autograd stay on torch. It costs one copy of the block weights
while entered.
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


def onednn_packing_available() -> bool:
    """Whether this torch build can reorder a linear weight for oneDNN (``VocabProjection`` too)."""
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()


def onednn_pack(weight: Tensor, rows: int | None = None) -> Tensor:
    """A copy of a linear weight ``[out, in]`` in oneDNN's blocked layout (``rows``: an
    optional hint of the row count it will serve) for :func:`onednn_linear`."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` of ``x`` ``[rows, in]`` with a weight packed by :func:`onednn_pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def decode_backend() -> str | None:
    """The decode linears' path on this machine at torch's current thread count:
    ``"onednn"`` on AVX-512 CPUs, ``"numpy"`` elsewhere at one thread, ``None`` (torch's
    own GEMMs) elsewhere at more threads."""
    if onednn_packing_available() and torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return "onednn"
    return "numpy" if torch.get_num_threads() == 1 else None


class _DecodeForward:
    """The forward of one ``nn.Linear`` while :class:`CpuDecodeLinears` is entered: small
    fp32 inputs without autograd through :meth:`project`, anything else through torch."""

    def __init__(self, module: nn.Linear) -> None:
        self.module = module
        self.source = WeightVersion(module.weight)

    def __call__(self, x: Tensor) -> Tensor:
        module = self.module
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if (rows > DECODE_MAX_ROWS or x.dtype != torch.float32 or x.requires_grad or x.device.type != "cpu"
                or not self.source.matches(module.weight)):
            return F.linear(x, module.weight, module.bias)
        out = self.project(x.reshape(rows, x.shape[-1]).contiguous())
        return out.view(*x.shape[:-1], out.shape[-1])

    def project(self, flat: Tensor) -> Tensor:
        raise NotImplementedError


class _KMajorForward(_DecodeForward):
    """numpy's BLAS on a K-major (``[in, out]``) copy of the weight."""

    def __init__(self, module: nn.Linear) -> None:
        super().__init__(module)
        self.weight_k = module.weight.detach().t().contiguous().numpy()

    def project(self, flat: Tensor) -> Tensor:
        out = flat.new_empty(flat.shape[0], self.weight_k.shape[1])
        np.matmul(flat.numpy(), self.weight_k, out=out.numpy())
        if self.module.bias is not None:
            out += self.module.bias
        return out


class _PackedForward(_DecodeForward):
    """oneDNN on a copy of the weight in its blocked layout (reordered once, for any row count)."""

    def __init__(self, module: nn.Linear) -> None:
        super().__init__(module)
        self.packed = onednn_pack(module.weight)

    def project(self, flat: Tensor) -> Tensor:
        return onednn_linear(flat, self.packed, self.module.bias)


_FORWARDS: dict[str, type[_DecodeForward]] = {"numpy": _KMajorForward, "onednn": _PackedForward}


class CpuDecodeLinears:
    """Context manager: eligible linears of ``model`` (plain fp32 ``nn.Linear`` on CPU,
    not ``exclude``) run small inputs through ``backend`` (``"onednn"`` or ``"numpy"``;
    default :func:`decode_backend`, which must then not be ``None``).

    A weight changed in place or replaced while entered is noticed and served by torch.
    numpy's BLAS gets torch's thread count for the duration.
    """

    def __init__(self, model: Any, exclude: tuple[nn.Module | None, ...] = (), backend: str | None = None) -> None:
        chosen = backend or decode_backend()
        if chosen is None or chosen not in _FORWARDS:
            raise ValueError(f"CpuDecodeLinears: no decode path {chosen!r} (choices: {sorted(_FORWARDS)})")
        self.backend: str = chosen
        self.modules = [m for m in model.modules() if plain_cpu_linear(m) and m.weight.dtype == torch.float32
                        and not any(m is e for e in exclude)]
        self._limits: contextlib.ExitStack | None = None

    def __enter__(self) -> CpuDecodeLinears:
        self._limits = contextlib.ExitStack()
        if self.backend == "numpy":
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # then numpy's BLAS keeps its own thread count
                pass
            else:
                self._limits.enter_context(threadpool_limits(limits=torch.get_num_threads(), user_api="blas"))
        forward = _FORWARDS[self.backend]
        for module in self.modules:
            module.forward = forward(module)  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)  # the class's forward again
        if self._limits is not None:
            self._limits.close()
            self._limits = None
