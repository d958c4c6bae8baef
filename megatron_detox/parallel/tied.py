"""Tied input/output embeddings across pipeline stages (Megatron's embedding group).

With PP the first stage holds ``tok_embeddings.weight`` and the last stage a copy as
``output.weight``. Both start from the same value (same plain name at init), and
after every backward their gradients are summed between the two stages, so both
copies receive the gradient of the shared weight and stay bit-identical under any
optimizer. The copies have the same TP/FSDP placements (vocab ``Shard(0)``, then the
same FSDP sharding), so local shards line up and can be all-reduced directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from megatron_detox.parallel.dims import ParallelDims


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _tied_param(part: nn.Module) -> nn.Parameter | None:
    embeddings: Any = getattr(part, "tok_embeddings", None)
    if embeddings is not None:
        return embeddings.weight
    output: Any = getattr(part, "output", None)
    return output.weight if output is not None else None


@dataclass
class TiedEmbeddingSync:
    group: dist.ProcessGroup | None
    """The {first stage, last stage} pair this rank belongs to; None on middle stages."""

    @classmethod
    def build(cls, dims: ParallelDims, mesh: DeviceMesh | None) -> TiedEmbeddingSync:
        """Create one two-rank group per (dp_replicate, dp_shard, tp) coordinate.

        ``new_group`` is collective over the world, so every rank creates every pair in
        the same order and keeps its own.
        """
        assert mesh is not None
        ranks = mesh.mesh  # [pp, dp_replicate, dp_shard, tp] global ranks
        me = dist.get_rank()
        mine: dist.ProcessGroup | None = None
        first, last = ranks[0].flatten().tolist(), ranks[-1].flatten().tolist()
        for a, b in zip(first, last, strict=True):
            group = dist.new_group([a, b])
            if me in (a, b):
                mine = group
        return cls(group=mine)

    def all_reduce_grads(self, parts: list[nn.Module]) -> None:
        if self.group is None:
            return
        params = [p for p in (_tied_param(part) for part in parts) if p is not None]
        for p in params:
            if p.grad is None:
                continue
            if isinstance(p.grad, DTensor) and isinstance(p, DTensor) and p.grad.placements != p.placements:
                # The embedding backward can leave a replicated gradient for a vocab-sharded
                # weight; bring it to the weight's layout so both stages' shards line up.
                p.grad = p.grad.redistribute(p.device_mesh, p.placements)
            dist.all_reduce(_local(p.grad), group=self.group)

    def duplicate_params(self, parts: list[nn.Module]) -> set[int]:
        """The last stage's copy: counted once (on the first stage) in the gradient norm."""
        if self.group is None:
            return set()
        dup: set[int] = set()
        for part in parts:
            output: Any = getattr(part, "output", None)
            if output is not None and getattr(part, "tok_embeddings", None) is None:
                dup.add(id(output.weight))
        return dup
