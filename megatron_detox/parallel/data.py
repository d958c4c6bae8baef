"""Data parallelism: FSDP2 ``fully_shard`` (ZeRO-3-like), replication, or both (HSDP).

One mechanism covers all three: ``fully_shard`` over the data-parallel sub-mesh.
A 1-D ``dp_shard`` mesh shards parameters, gradients and optimizer state; a 2-D
``(dp_replicate, dp_shard)`` mesh shards within a group and all-reduces across groups
(HSDP); with ``dp_shard == 1`` that is plain replication (DDP semantics: full
parameters everywhere, gradients all-reduced). Each transformer block is its own
FSDP unit (all-gathered just before use, freed after), the root holds embeddings,
final norm and head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from megatron_detox.models.gpt import Transformer

Precision = Literal["fp32", "bf16", "fp16"]

PARAM_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dp_mesh_of(mesh: DeviceMesh, dp_replicate: int) -> DeviceMesh:
    """The sub-mesh FSDP runs on: 1-D ``dp_shard`` or 2-D ``(dp_replicate, dp_shard)`` for HSDP."""
    return mesh["dp_replicate", "dp_shard"] if dp_replicate > 1 else mesh["dp_shard"]


def apply_data_parallel(model: Transformer, dp_mesh: DeviceMesh, *, precision: Precision = "fp32",
                        cpu_offload: bool = False, reshard_after_forward: bool = True) -> None:
    """Wrap each block and then the root of ``model`` (a full model or a pipeline stage).

    Mixed precision: parameters are cast to ``precision`` for compute, gradients are
    reduced in fp32 and the sharded master weights stay fp32.
    """
    mp = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32)
    # Pinned host memory needs an accelerator; on a CPU-only (gloo) mesh the offload path
    # still runs (sharded state and optimizer step on the CPU), just without pinning.
    pin = dp_mesh.device_type != "cpu"
    offload: OffloadPolicy = CPUOffloadPolicy(pin_memory=pin) if cpu_offload else OffloadPolicy()
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, offload_policy=offload,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, offload_policy=offload,
                reshard_after_forward=reshard_after_forward)


def set_gradient_sync(parts: list[nn.Module], enabled: bool) -> None:
    """Skip (or resume) the DP gradient reduction: off for all but the last micro-batch."""
    for part in parts:
        if isinstance(part, FSDPModule):
            part.set_requires_gradient_sync(enabled)
