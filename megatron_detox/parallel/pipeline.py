"""Pipeline parallelism with ``torch.distributed.pipelining``.

The layer stack is cut into ``pp * virtual_stages`` stages. Stage ``i`` lives on pp
rank ``i % pp`` (loop placement, as Megatron's interleaved schedule wants), so with
virtual stages a rank holds several non-adjacent chunks. Each stage is a copy of the
(meta) model with the parts it does not own deleted: the embedding stays on stage 0,
the final norm, head and loss on the last stage. Layer keys keep their global index,
so parameter names on every stage are plain-model names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from megatron_detox.models.gpt import Transformer
from megatron_detox.parallel.dims import ParallelDims

Schedule = PipelineScheduleSingle | PipelineScheduleMulti
LossFn = Callable[[Tensor, Tensor], Tensor]


def stage_layer_counts(num_layers: int, num_stages: int, explicit: list[int] | None = None) -> list[int]:
    """Layers per stage: ``explicit`` as given, or an even split.

    The remainder goes to stages 1, 2, ... so stage 0 (which also holds the
    embedding) is never the heaviest.
    """
    if explicit is not None:
        return list(explicit)
    base, extra = divmod(num_layers, num_stages)
    return [base + (1 if 1 <= stage <= extra else 0) for stage in range(num_stages)]


def stage_layer_ids(counts: list[int], stage: int) -> list[int]:
    start = sum(counts[:stage])
    return list(range(start, start + counts[stage]))


def build_stage_module(model: Transformer, layer_ids: list[int], *, first: bool, last: bool) -> Transformer:
    """A copy of ``model`` (normally on meta) with only this stage's parts."""
    stage = copy.deepcopy(model)
    keep = {str(i) for i in layer_ids}
    for key in list(stage.layers.keys()):
        if key not in keep:
            del stage.layers[key]
    if not first:
        stage.tok_embeddings = None
        stage.pos_embeddings = None
    if not last:
        stage.norm = None
        stage.output = None
    return stage


def split_into_stages(model: Transformer, dims: ParallelDims, mesh: DeviceMesh,
                      layers_per_stage: list[int] | None = None) -> tuple[list[Transformer], list[int]]:
    """This rank's stage modules and their global stage indices."""
    counts = stage_layer_counts(len(model.layers), dims.num_stages, layers_per_stage)
    stage_ids = dims.stage_ids(mesh)
    parts = [build_stage_module(model, stage_layer_ids(counts, s), first=s == 0, last=s == dims.num_stages - 1)
             for s in stage_ids]
    return parts, stage_ids


def build_schedule(parts: list[nn.Module], stage_ids: list[int], dims: ParallelDims, mesh: DeviceMesh,
                   device: torch.device, schedule: str, num_microbatches: int, loss_fn: LossFn) -> Schedule:
    """Wrap the parts in ``PipelineStage``s and build the named schedule.

    ``scale_grads=False``: our loss function already divides by the global token
    count, so the schedule must not divide again by the number of micro-batches.
    """
    group = mesh["pp"].get_group()
    stages: list[Any] = [PipelineStage(part, stage_index=sid, num_stages=dims.num_stages, device=device, group=group)
              for part, sid in zip(parts, stage_ids, strict=True)]
    if schedule == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(stages, n_microbatches=num_microbatches, loss_fn=loss_fn,
                                       scale_grads=False)
    single = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
    (stage,) = stages
    return single(stage, n_microbatches=num_microbatches, loss_fn=loss_fn, scale_grads=False)
