"""Generation on a parallel layout: tensor-parallel model, data-parallel split of ids.

The engine runs a DTensor-sharded model unchanged (it only calls the model and sizes
the cache from the local ``k_proj`` shard). Logits are gathered (no loss-parallel
output) so every TP rank samples the same token from the same generators. With
``pp > 1`` each rank keeps its stage and wraps it in a
:class:`~megatron_detox.generate.pipeline.PipelineDecoder`.

The layout is applied to a model built on the meta device (``inference.load_for_inference``
then materializes and fills only the local shards), or to a materialized one (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from megatron_detox.errors import UserError
from megatron_detox.models.gpt import Transformer


@dataclass(frozen=True)
class GenerationLayout:
    dp_rank: int
    dp_size: int
    writer_rank: bool
    """Writes this DP group's shard: TP rank 0."""
    merger_rank: bool
    """Merges all shards at the end: global rank 0."""


SINGLE_PROCESS = GenerationLayout(0, 1, True, True)


def apply_generation_layout(model: Transformer, env: Any) -> tuple[Transformer, GenerationLayout]:
    """This rank's stage of ``model`` with tensor parallelism applied (``env``: a ``parallel.env.DistEnv``).

    On a meta model nothing is allocated: the returned part is still on meta.
    """
    from megatron_detox.parallel.pipeline import build_stage_module, stage_layer_counts, stage_layer_ids
    from megatron_detox.parallel.tensor import apply_tensor_parallel

    dims, mesh = env.dims, env.mesh
    if dims.virtual_stages > 1:
        raise UserError(f"parallel.virtual_stages={dims.virtual_stages}: generation runs one stage per pipeline "
                        "rank; use parallel.virtual_stages=1")
    if dims.pp > 1:
        stage = dims.pp_rank(mesh)
        counts = stage_layer_counts(len(model.layers), dims.pp)
        model = build_stage_module(model, stage_layer_ids(counts, stage), first=stage == 0,
                                   last=stage == dims.pp - 1)
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel=False, loss_parallel=False)
    writer = dims.tp_rank(mesh) == 0 and dims.pp_rank(mesh) == 0
    return model, GenerationLayout(dp_rank=dims.dp_rank(mesh), dp_size=dims.dp_size, writer_rank=writer,
                                   merger_rank=env.rank == 0)


def generation_runner(part: Transformer, env: Any) -> Any:
    """What the engine calls: the part itself, or a ``PipelineDecoder`` around a pipeline stage."""
    from megatron_detox.generate.pipeline import PipelineDecoder

    dims, mesh = env.dims, env.mesh
    if dims.pp > 1:
        return PipelineDecoder(part, mesh["pp"].get_group(), stage=dims.pp_rank(mesh), num_stages=dims.pp)
    return part


def shard_for_generation(model: Transformer, env: object) -> tuple[Any, GenerationLayout]:
    """This rank's model for the engine, and its place (``env`` is a ``parallel.env.DistEnv``).

    Tensor parallelism is applied in place; with pipeline stages the returned object is
    a ``PipelineDecoder`` around this rank's stage.
    """
    part, layout = apply_generation_layout(model, env)
    return generation_runner(part, env), layout


def min_over_ranks(device: torch.device) -> Callable[[int], int]:
    """``agree(value)``: the minimum of ``value`` over all ranks (a collective every rank calls).

    Ranks that run one forward together (TP and PP peers) must use the same batch size,
    while each measures its own free memory; the smallest fits them all.
    """
    import torch.distributed as dist

    def agree(value: int) -> int:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    return agree
