"""A training layout on paper: parallel degrees, batch shape, recompute and precision.

``validate_layout`` refuses what cannot run (degrees not dividing the GPU count, heads,
query groups, layers or batch) with one line naming the flag, as the CLI prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig

Recompute = Literal["none", "selective", "full"]
Precision = Literal["bf16", "fp16", "fp32"]
Schedule = Literal["1f1b", "gpipe"]
Method = Literal["full", "adapter", "prefix"]

RECOMPUTE: tuple[Recompute, ...] = ("none", "selective", "full")
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Layout:
    """world size = tp * pp * dp; dp = dp_shard * (dp / dp_shard) replicas (HSDP when both > 1)."""

    gpus: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    """Model chunks per pipeline rank (interleaved 1F1B when > 1)."""
    dp_shard: int = 1
    """FSDP (ZeRO-3) degree within the data-parallel ranks; 1 keeps full replicas."""
    seq_length: int = 2048
    global_batch: int = 8
    micro_batch: int = 1
    recompute: Recompute = "none"
    precision: Precision = "bf16"
    sequence_parallel: bool = True
    """Megatron sequence parallelism in the TP group (only matters when tp > 1)."""
    distributed_optimizer: bool = False
    """ZeRO-1: optimizer states (and fp32 master weights) sharded over data-parallel ranks."""
    flash_attention: bool = True
    """Attention without materialized [s, s] scores (SDPA/flash); False is Megatron's core attention."""
    schedule: Schedule = "1f1b"

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per step on each data-parallel rank (the pipeline's m)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        parts.append(f"DP{self.dp}" + (f" (FSDP {self.dp_shard})" if self.dp_shard > 1 else ""))
        return " x ".join(parts)


def validate_layout(cfg: ModelConfig, layout: Layout) -> None:
    """Raise ``UserError`` (one line) for a layout that cannot run this model."""
    for flag, value in (("--gpus", layout.gpus), ("--tp", layout.tp), ("--pp", layout.pp), ("--vpp", layout.vpp),
                        ("--dp-shard", layout.dp_shard), ("--seq", layout.seq_length),
                        ("--global-batch", layout.global_batch), ("--micro-batch", layout.micro_batch)):
        if value <= 0:
            raise UserError(f"{flag} {value}: must be positive")
    if layout.gpus % (layout.tp * layout.pp):
        raise UserError(f"--gpus {layout.gpus} is not divisible by --tp {layout.tp} x --pp {layout.pp}")
    if cfg.num_attention_heads % layout.tp:
        raise UserError(f"--tp {layout.tp} does not divide the {cfg.num_attention_heads} attention heads of {cfg.name}")
    if cfg.kv_heads % layout.tp:
        raise UserError(f"--tp {layout.tp} does not divide the {cfg.kv_heads} query groups of {cfg.name}")
    if cfg.ffn_size % layout.tp:
        raise UserError(f"--tp {layout.tp} does not divide the FFN size {cfg.ffn_size} of {cfg.name}")
    stages = layout.pp * layout.vpp
    if cfg.num_layers % stages:
        raise UserError(f"--pp {layout.pp} x --vpp {layout.vpp} = {stages} stages do not divide "
                        f"the {cfg.num_layers} layers of {cfg.name}")
    if layout.vpp > 1 and layout.pp == 1:
        raise UserError("--vpp > 1 needs pipeline parallelism (--pp > 1)")
    if layout.dp % layout.dp_shard:
        raise UserError(f"--dp-shard {layout.dp_shard} does not divide the data-parallel size {layout.dp}")
    if layout.global_batch % (layout.micro_batch * layout.dp):
        raise UserError(f"--global-batch {layout.global_batch} is not divisible by --micro-batch "
                        f"{layout.micro_batch} x data-parallel size {layout.dp}")
    if layout.vpp > 1 and layout.num_microbatches % layout.pp:
        raise UserError(f"interleaved schedule: {layout.num_microbatches} micro-batches per step must be a "
                        f"multiple of --pp {layout.pp}")
    if layout.seq_length > cfg.max_position_embeddings:
        raise UserError(f"--seq {layout.seq_length} exceeds the {cfg.max_position_embeddings} positions of {cfg.name}")
    if layout.sequence_parallel and layout.tp > 1 and layout.seq_length % layout.tp:
        raise UserError(f"--seq {layout.seq_length} is not divisible by --tp {layout.tp} (sequence parallelism)")
