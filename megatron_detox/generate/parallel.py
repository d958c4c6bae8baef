"""Generation on a parallel layout: tensor-parallel model, data-parallel split of ids.

The engine runs a DTensor-sharded model unchanged (it only calls the model and sizes
the cache from the local ``k_proj`` shard). Logits are gathered (no loss-parallel
output) so every TP rank samples the same token from the same generators. With
``pp > 1`` each rank keeps its stage and wraps it in a
:class:`~megatron_detox.generate.pipeline.PipelineDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def shard_for_generation(model: Transformer, env: object) -> tuple[Any, GenerationLayout]:
    """This rank's model for the engine, and its place (``env`` is a ``parallel.env.DistEnv``).

    Tensor parallelism is applied in place; with pipeline stages the returned object is
    a ``PipelineDecoder`` around this rank's stage.
    """
    from megatron_detox.generate.pipeline import PipelineDecoder
    from megatron_detox.parallel.pipeline import build_stage_module, stage_layer_counts, stage_layer_ids
    from megatron_detox.parallel.tensor import apply_tensor_parallel

    dims, mesh = env.dims, env.mesh  # type: ignore[attr-defined]
    if dims.virtual_stages > 1:
        raise UserError(f"parallel.virtual_stages={dims.virtual_stages}: generation runs one stage per pipeline "
                        "rank; use parallel.virtual_stages=1")
    runner: Any = model
    if dims.pp > 1:
        stage = dims.pp_rank(mesh)
        counts = stage_layer_counts(len(model.layers), dims.pp)
        runner = build_stage_module(model, stage_layer_ids(counts, stage), first=stage == 0, last=stage == dims.pp - 1)
        model = runner
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel=False, loss_parallel=False)
    if dims.pp > 1:
        runner = PipelineDecoder(model, mesh["pp"].get_group(), stage=dims.pp_rank(mesh), num_stages=dims.pp)
    writer = dims.tp_rank(mesh) == 0 and dims.pp_rank(mesh) == 0
    return runner, GenerationLayout(dp_rank=dims.dp_rank(mesh), dp_size=dims.dp_size, writer_rank=writer,
                                    merger_rank=env.rank == 0)  # type: ignore[attr-defined]


def prepare_for_generation(model: Transformer, tp: int = 1, pp: int = 1) -> tuple[Any, GenerationLayout, Any]:
    """Under torchrun: this rank's model (TP-sharded / pipeline stage), its layout and a barrier.

    A single process gets the model back unchanged, the whole id range and no barrier.
    """
    from megatron_detox.config import ParallelConfig
    from megatron_detox.parallel.env import init_distributed

    env = init_distributed(ParallelConfig(tp=tp, pp=pp), model.config)
    if env.world_size == 1:
        return model, GenerationLayout(0, 1, True, True), None
    import torch.distributed as dist

    runner, layout = shard_for_generation(model, env)
    return runner, layout, dist.barrier
