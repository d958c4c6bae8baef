"""Enumerate the layouts a model can run on a GPU count and rank those that fit."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

from megatron_detox.config import PeftConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.plan.estimate import TrainingPlan, plan_training
from megatron_detox.plan.hardware import Device
from megatron_detox.plan.layout import RECOMPUTE, Layout, validate_layout

MICRO_BATCHES = (1, 2, 4, 8, 16)
VIRTUAL_STAGES = (1, 2, 4)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(cfg: ModelConfig, base: Layout) -> Iterator[Layout]:
    """Every valid (tp, pp, vpp, micro-batch, recompute, ZeRO-1 / FSDP) for ``base``'s GPU
    count, batch, sequence and precision. TP stays within a node's 8 GPUs, as is usual."""
    for tp in (d for d in _divisors(base.gpus) if d <= 8):
        for pp in _divisors(base.gpus // tp):
            dp = base.gpus // (tp * pp)
            for vpp in VIRTUAL_STAGES:
                for micro in MICRO_BATCHES:
                    for recompute in RECOMPUTE:
                        for dp_shard, zero1 in ((1, False), (1, True), (dp, False)):
                            if (zero1 or dp_shard > 1) and dp == 1:
                                continue
                            layout = replace(base, tp=tp, pp=pp, vpp=vpp, micro_batch=micro, recompute=recompute,
                                             dp_shard=dp_shard, distributed_optimizer=zero1)
                            try:
                                validate_layout(cfg, layout)
                            except UserError:
                                continue
                            yield layout


def search_layouts(cfg: ModelConfig, base: Layout, device: Device, method: str = "full",
                   peft_cfg: PeftConfig | None = None, top: int = 5) -> list[TrainingPlan]:
    """The ``top`` fitting parallel layouts (tp, pp, vpp, FSDP) by estimated tokens per day,
    each with its best micro-batch / recompute / ZeRO-1 setting. Ties (within 0.1 %) go to
    fewer pipeline stages, less tensor parallelism, less recompute, then less memory."""
    best: dict[tuple[int, int, int, int], TrainingPlan] = {}
    for layout in candidate_layouts(cfg, base):
        plan = plan_training(cfg, layout, device, method, peft_cfg)
        if not plan.fits:
            continue
        key = (layout.tp, layout.pp, layout.vpp, layout.dp_shard)
        if key not in best or _rank(plan) < _rank(best[key]):
            best[key] = plan
    return sorted(best.values(), key=_rank)[:top]


def _rank(plan: TrainingPlan) -> tuple[float, ...]:
    lay = plan.layout
    speed = round(math.log(plan.tokens_per_day) / math.log(1.001))  # buckets of 0.1 %
    return (-speed, lay["pp"], lay["tp"], RECOMPUTE.index(lay["recompute"]), lay["vpp"],
            plan.memory_per_gpu_gb["total"])
