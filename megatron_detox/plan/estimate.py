"""A training layout's plan: memory per GPU, FLOPs, pipeline bubble, communication, step time.

Step time is ``(compute + tensor-parallel + pipeline communication) x (1 + bubble) +
data-parallel gradient reduction``: compute runs at ``efficiency`` of the device's peak,
tensor-parallel collectives are not overlapped (as in Megatron's 2021 numbers), and the
gradient reduction runs after the pipeline flush. Given ``mfu``, the step time is instead
the model FLOPs at that fraction of peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from megatron_detox.config import PeftConfig
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import closed_form_num_params
from megatron_detox.peft.surgery import closed_form_trainable
from megatron_detox.plan.flops import TrainFlops, flops_per_iteration, train_flops
from megatron_detox.plan.hardware import Device
from megatron_detox.plan.layout import Layout, validate_layout
from megatron_detox.plan.memory import PARAM_BYTES, activation_bytes, peak_memory, stage_params

DEFAULT_EFFICIENCY = 0.6
"""Fraction of peak the matmuls reach without communication or bubble; Narayanan et al.
measured 44-52 % end to end (with both) on A100s, which this reproduces for their layouts."""


@dataclass
class TrainingPlan:
    model: str
    parameters: int
    trainable_parameters: int
    method: str
    device: str
    layout: dict[str, Any]
    memory_per_gpu_gb: dict[str, float]
    peak_stage: int
    capacity_gb: float
    usable_gb: float
    fits: bool
    margin_gb: float
    flops_per_iteration: float
    """Executed FLOPs, recompute included (what Narayanan et al. report)."""
    model_flops_per_iteration: float
    """FLOPs without recompute (the numerator of MFU)."""
    bubble_fraction: float
    num_microbatches: int
    communication_gb_per_step: dict[str, float]
    step_time_s: float
    mfu: float
    tflops_per_gpu: float
    tokens_per_day: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_count(cfg: ModelConfig, method: str, peft_cfg: PeftConfig) -> int:
    closed = closed_form_trainable(cfg, method, peft_cfg)
    return closed_form_num_params(cfg) if closed is None else closed


def bubble_fraction(layout: Layout) -> float:
    """Idle time over ideal compute time: (p - 1) / (v m) (Narayanan et al. 2021, §2.2)."""
    return (layout.pp - 1) / (layout.vpp * layout.num_microbatches)


def communication_bytes(cfg: ModelConfig, layout: Layout, trainable: int) -> dict[str, float]:
    """Bytes each GPU sends per step, ring collectives (2 (n-1)/n x size per all-reduce)."""
    s, b, h, t, d = layout.seq_length, layout.micro_batch, cfg.hidden_size, layout.tp, layout.dp
    a = activation_bytes(layout.precision)
    m = layout.num_microbatches
    layers = cfg.num_layers // layout.pp
    # Two all-reduces (or all-gather + reduce-scatter pairs with SP) forward, two backward,
    # two more when the forward is recomputed.
    collectives = 6 if layout.recompute == "full" else 4
    tp = layers * m * collectives * 2 * (t - 1) / t * a * s * b * h
    # Activations forward and their gradients backward across each chunk boundary
    # (scattered over the TP group, Narayanan et al.'s scatter/gather optimization).
    pp = 2 * m * layout.vpp * a * s * b * h / t if layout.pp > 1 else 0.0
    _, grad_bytes, _ = PARAM_BYTES[layout.precision]
    local = trainable * stage_params(cfg, layout, 0).total / closed_form_num_params(cfg) / t
    if layout.dp_shard > 1:  # FSDP: weights gathered forward and backward, gradients reduce-scattered
        shard = layout.dp_shard
        dp = (shard - 1) / shard * local * (2 * 2 * PARAM_BYTES[layout.precision][0] + grad_bytes)
        replicas = d // shard
        dp += 2 * (replicas - 1) / replicas * local / shard * grad_bytes
    else:
        dp = 2 * (d - 1) / d * local * grad_bytes
    return {"tp": tp, "pp": pp, "dp": dp}


def _link_gbs(device: Device, group_span: int) -> float:
    """Intra-node links when a group's ranks fit in one node, else the network."""
    return device.intra_node_gbs if group_span <= device.gpus_per_node else device.inter_node_gbs


def _step_time(cfg: ModelConfig, layout: Layout, device: Device, comm: dict[str, float], efficiency: float,
               flops: TrainFlops) -> float:
    """One micro-batch on the slowest stage (its layers, plus the LM head on the last stage),
    m of them stretched by the bubble, plus the gradient reduction not hidden under the last
    micro-batch's backward."""
    peak = device.peak_tflops(layout.precision) * 1e12 * efficiency
    m = layout.num_microbatches
    tokens = layout.micro_batch * layout.seq_length
    layers = cfg.num_layers // layout.pp
    stage_flops = layers * flops.per_layer + flops.logits  # the last stage (stage 0's embedding lookup is free)
    compute = stage_flops * tokens / layout.tp / peak
    tp_time = comm["tp"] / m / (_link_gbs(device, layout.tp) * 1e9)
    pp_time = comm["pp"] / m / (_link_gbs(device, layout.tp * layout.pp) * 1e9)
    dp_time = comm["dp"] / (_link_gbs(device, layout.gpus if layout.dp > 1 else 1) * 1e9)
    hidden = 2.0 / 3.0 * compute
    return (compute + tp_time + pp_time) * m * (1 + bubble_fraction(layout)) + max(0.0, dp_time - hidden)


def plan_training(cfg: ModelConfig, layout: Layout, device: Device, method: str = "full",
                  peft_cfg: PeftConfig | None = None, mfu: float | None = None,
                  efficiency: float = DEFAULT_EFFICIENCY) -> TrainingPlan:
    validate_layout(cfg, layout)
    peft_cfg = peft_cfg or PeftConfig()
    total = closed_form_num_params(cfg)
    trainable = trainable_count(cfg, method, peft_cfg)
    peft = method != "full"
    memory = peak_memory(cfg, layout, trainable / total if peft else 1.0)
    prefix = peft_cfg.prefix.length if method == "prefix" else 0
    batch = (cfg, layout.seq_length, layout.global_batch)
    executed = flops_per_iteration(*batch, layout.recompute, trainable if peft else None, prefix)
    executed_split = train_flops(cfg, layout.seq_length, layout.recompute, trainable if peft else None, prefix)
    model_flops = flops_per_iteration(*batch, "none", trainable if peft else None, prefix)
    bubble = bubble_fraction(layout)
    comm = communication_bytes(cfg, layout, trainable)
    peak = device.peak_tflops(layout.precision) * 1e12
    notes = []
    if mfu is not None:
        step = model_flops / (layout.gpus * peak * mfu)
        notes.append(f"step time at the given MFU {mfu:.2f}")
    else:
        step = _step_time(cfg, layout, device, comm, efficiency, executed_split)
        notes.append(f"step time assumes matmuls at {efficiency:.2f} of peak, the slowest pipeline stage setting "
                     "the pace, TP/PP communication not overlapped, and the gradient reduction overlapping "
                     "only the last micro-batch's backward")
    usable = device.usable_gb
    used = memory.total / 1e9
    return TrainingPlan(
        model=cfg.name, parameters=total, trainable_parameters=trainable, method=method, device=device.name,
        layout=asdict(layout) | {"dp": layout.dp, "description": layout.describe()},
        memory_per_gpu_gb=memory.as_gb(), peak_stage=memory.stage, capacity_gb=device.memory_gb,
        usable_gb=usable, fits=used <= usable, margin_gb=usable - used,
        flops_per_iteration=executed, model_flops_per_iteration=model_flops, bubble_fraction=bubble,
        num_microbatches=layout.num_microbatches,
        communication_gb_per_step={k: v / 1e9 for k, v in comm.items()}, step_time_s=step,
        mfu=model_flops / (layout.gpus * peak * step), tflops_per_gpu=executed / layout.gpus / step / 1e12,
        tokens_per_day=layout.global_batch * layout.seq_length / step * 86400, notes=notes)
