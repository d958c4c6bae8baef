"""The vocabulary projection of the slots being sampled, fast on CPU.

The engine runs the model without its output layer and projects only the last slot
(:func:`output_detached` + :class:`VocabProjection`). On CPU a decode step's projection
(SmolLM2: 49k x 576 by 32 rows) is ~15% of the step: there the weight is prepacked
once in oneDNN's blocked layout, which runs it ~20% faster than MKL's GEMM, and where
oneDNN is missing it runs as slices of the vocabulary, ~12% faster than one GEMM
(``benchmarks/generate_throughput.py``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megatron_detox.generate.cpu_linears import (
    WeightVersion,
    onednn_linear,
    onednn_pack,
    onednn_packing_available,
    plain_cpu_linear,
)
from megatron_detox.models.gpt import output_detached

__all__ = ["VOCAB_CHUNK_ROWS", "VocabProjection", "output_detached"]

VOCAB_CHUNK_ROWS = 1024


class VocabProjection:
    """``output`` applied to ``[batch, hidden]`` -> logits ``[batch, padded_vocab]``.

    ``output`` None means the model returns logits itself (identity). Accelerators,
    DTensor (tensor-parallel) weights, hooked or non-``nn.Linear`` layers are simply
    called. The packed copy follows the weight: it is rebuilt if the weight is replaced
    or changed in place, so one projection may serve a whole generation run.
    """

    def __init__(self, output: nn.Module | None, *, prepack: bool = True) -> None:
        self.output = output
        self.prepack = prepack and onednn_packing_available()
        self._packed: Tensor | None = None
        self._packed_from: WeightVersion | None = None

    def __call__(self, last: Tensor) -> Tensor:
        output = self.output
        if output is None:
            return last
        if not plain_cpu_linear(output):
            return output(last)
        weight = output.weight
        if self.prepack and weight.dtype == torch.float32 and last.dtype == torch.float32:
            return onednn_linear(last, self._packed_weight(weight, last.shape[0]), output.bias)
        logits = last.new_empty(last.shape[0], weight.shape[0])
        for start in range(0, weight.shape[0], VOCAB_CHUNK_ROWS):
            rows = slice(start, start + VOCAB_CHUNK_ROWS)
            logits[:, rows] = F.linear(last, weight[rows], None if output.bias is None else output.bias[rows])
        return logits

    def _packed_weight(self, weight: Tensor, batch: int) -> Tensor:
        if self._packed is None or self._packed_from is None or not self._packed_from.matches(weight):
            self._packed = onednn_pack(weight, batch)
            self._packed_from = WeightVersion(weight)
        return self._packed
