"""Per-GPU memory of a training layout: weights, gradients, optimizer states, activations.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4) tensor by tensor, so that for Megatron GPT with dropout
and materialized attention scores one layer of one micro-batch stores exactly
``sbh (34 + 5 a s / h)`` bytes in 16-bit (no parallelism), ``sbh (10 + 24/t + 5as/(ht))``
with tensor parallelism, ``sbh (34/t + 5as/(ht))`` with sequence parallelism as well,
the ``5as/h`` term gone under selective recompute, and ``2 sbh`` with full recompute.
The tensors generalize to grouped-query attention, any MLP width, SwiGLU, no dropout
(no masks) and flash attention (no ``[s, s]`` scores: only a float32 log-sum-exp per row).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import closed_form_num_params
from megatron_detox.plan.layout import Layout

# Bytes per parameter: (weights, gradients, optimizer states). Mixed precision keeps 16-bit
# weights for compute, fp32 master weights + Adam m and v in the optimizer (12 bytes);
# bf16 accumulates gradients in fp32 (Megatron's main_grad, FSDP's reduce_dtype), fp16 in fp16.
PARAM_BYTES: dict[str, tuple[int, int, int]] = {"bf16": (2, 4, 12), "fp16": (2, 2, 12), "fp32": (4, 4, 8)}


def activation_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class StageParams:
    """Parameters of one pipeline rank's model chunks (before tensor-parallel splitting)."""

    layers: int
    layer_params: int
    embedding: int
    output: int

    @property
    def total(self) -> int:
        return self.layers * self.layer_params + self.embedding + self.output


def layer_num_params(cfg: ModelConfig) -> int:
    return closed_form_num_params(cfg.replace(num_layers=1)) - closed_form_num_params(cfg.replace(num_layers=0))


def stage_params(cfg: ModelConfig, layout: Layout, stage: int) -> StageParams:
    """Stage 0 holds the embeddings, the last stage the final norm and LM head (a copy of
    the tied embedding when the pipeline has more than one stage, as Megatron keeps)."""
    last = layout.pp - 1
    everything = closed_form_num_params(cfg)
    no_layers = closed_form_num_params(cfg.replace(num_layers=0))
    word = cfg.padded_vocab_size * cfg.hidden_size
    positions = cfg.max_position_embeddings * cfg.hidden_size if cfg.position_embedding == "learned" else 0
    embedding = word + positions
    head = no_layers - embedding  # final norm + untied output (0 when tied)
    if cfg.tie_word_embeddings and layout.pp > 1:
        head += word
    assert everything == no_layers + cfg.num_layers * layer_num_params(cfg)  # internal invariant
    return StageParams(layers=cfg.num_layers // layout.pp, layer_params=layer_num_params(cfg),
                       embedding=embedding if stage == 0 else 0, output=head if stage == last else 0)


def layer_activation_bytes(cfg: ModelConfig, layout: Layout, micro_batch: int | None = None) -> float:
    """Bytes one layer stores for backward, per micro-batch, on one GPU (Korthikanti §4.1)."""
    s, b, h, t = layout.seq_length, micro_batch or layout.micro_batch, cfg.hidden_size, layout.tp
    a = activation_bytes(layout.precision)
    sp = layout.sequence_parallel and t > 1
    if layout.recompute == "full":
        return a * s * b * h / (t if sp else 1)  # only the layer input is kept
    kv = cfg.kv_heads * cfg.head_dim
    f = cfg.ffn_size
    hidden_mask = 1 if cfg.hidden_dropout > 0 else 0
    # Replicated across the TP group unless sequence parallel: two norm inputs, the attention
    # and MLP inputs (norm outputs), the two residual dropout masks.
    replicated = 4 * a * s * b * h + 2 * hidden_mask * s * b * h
    # Split over TP: q, k, v, the output projection input, the MLP intermediates.
    mlp = (3 if cfg.activation == "swiglu" else 2) * a * s * b * f
    split = a * s * b * (2 * h + 2 * kv) + mlp
    core = 0.0
    if layout.recompute != "selective":
        heads = cfg.num_attention_heads
        if layout.flash_attention:
            core = 4 * heads * s * b  # float32 log-sum-exp per query row
        else:
            attention_mask = 1 if cfg.attention_dropout > 0 else 0
            # softmax output, its dropout mask and dropout output: 5as^2b for 16-bit with dropout
            core = (a + attention_mask * (1 + a)) * heads * s * s * b
    return replicated / (t if sp else 1) + (split + core) / t


def in_flight_layer_microbatches(cfg: ModelConfig, layout: Layout, stage: int) -> float:
    """Layer activations (in units of one layer x one micro-batch) a pipeline rank holds at
    its peak. 1F1B: stage i holds min(m, p - i) micro-batches of its l/p layers; interleaved
    (v chunks) stage 0 holds l (1 + (p-1)/(p v)) layers' worth (Korthikanti §4.2.3); GPipe all m."""
    p, m, v = layout.pp, layout.num_microbatches, layout.vpp
    per_rank_layers = cfg.num_layers / p
    if layout.schedule == "gpipe":
        return per_rank_layers * m
    held = min(m, p - stage)
    if v > 1:
        return per_rank_layers * held * (1 + (p - 1 - stage) / (p * v))
    return per_rank_layers * held


def stage_extra_activation_bytes(cfg: ModelConfig, layout: Layout, stage: int) -> float:
    """Embedding dropout masks on stage 0 (one per in-flight micro-batch) and, on the last
    stage, the final norm and LM-head inputs plus the float32 logits (Korthikanti §4.3)."""
    s, b, h, t = layout.seq_length, layout.micro_batch, cfg.hidden_size, layout.tp
    a = activation_bytes(layout.precision)
    sp_div = t if layout.sequence_parallel and t > 1 else 1
    extra = 0.0
    if stage == 0 and cfg.hidden_dropout > 0:
        extra += s * b * h * min(layout.num_microbatches, layout.pp) / sp_div
    if stage == layout.pp - 1:
        extra += 2 * a * s * b * h / sp_div + 4 * s * b * cfg.padded_vocab_size / t
    return extra


@dataclass(frozen=True)
class MemoryParts:
    """Bytes on one GPU of the given pipeline stage."""

    stage: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float
    """FSDP: the all-gathered 16-bit weights of the layer in use and the one prefetched."""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers

    def as_gb(self) -> dict[str, float]:
        return {name: getattr(self, name) / 1e9 for name in ("weights", "gradients", "optimizer", "activations",
                                                             "buffers")} | {"total": self.total / 1e9}


def stage_memory(cfg: ModelConfig, layout: Layout, stage: int, trainable_fraction: float = 1.0) -> MemoryParts:
    """Memory of one GPU of ``stage``. ``trainable_fraction`` < 1 for PEFT: the PEFT weights
    (spread over the layers as the base is) train; the frozen base has no gradients or states."""
    params = stage_params(cfg, layout, stage)
    base = params.total / layout.tp
    w, g, o = PARAM_BYTES[layout.precision]
    if trainable_fraction < 1.0:  # PEFT: base frozen, trainable = fraction of base (stored extra)
        trainable = base * trainable_fraction
        frozen = base
    else:
        trainable, frozen = base, 0.0
    shard = layout.dp_shard
    optimizer_shard = layout.dp if layout.distributed_optimizer else shard
    weights = (frozen * w + trainable * w) / shard
    gradients = trainable * g / shard
    optimizer = trainable * o / optimizer_shard
    buffers = 2 * params.layer_params / layout.tp * w if shard > 1 else 0.0
    per_layer = layer_activation_bytes(cfg, layout)
    activations = per_layer * in_flight_layer_microbatches(cfg, layout, stage)
    if layout.recompute == "full":  # one layer's full activations while it is recomputed
        activations += layer_activation_bytes(cfg, replace(layout, recompute="none"))
    activations += stage_extra_activation_bytes(cfg, layout, stage)
    return MemoryParts(stage, weights, gradients, optimizer, activations, buffers)


def peak_memory(cfg: ModelConfig, layout: Layout, trainable_fraction: float = 1.0) -> MemoryParts:
    """The most loaded GPU: the first or the last pipeline stage (middle ones hold less)."""
    stages = {0, layout.pp - 1}
    return max((stage_memory(cfg, layout, s, trainable_fraction) for s in stages), key=lambda m: m.total)

