"""Time of a whole SGEAT run on paper: generate, score, train, evaluate.

Decode is modelled per step as the slower of reading the weights plus the KV cache
written so far at ``bandwidth_efficiency`` of the memory bandwidth, and the step's
matmuls at ``efficiency`` of peak; prefill is compute. Scoring runs at a QPS (Perspective)
or a local scorer's measured rate. Training is the filtered corpus through
``plan_training``'s step time; evaluation is the RealToxicityPrompts protocol
(``eval.samples`` continuations of ``eval.max_new_tokens`` per prompt) plus their scoring.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from megatron_detox.config import EvalConfig, GenerateConfig, SgeatConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import closed_form_num_params
from megatron_detox.plan.estimate import DEFAULT_EFFICIENCY, TrainingPlan
from megatron_detox.plan.flops import forward_flops_per_token
from megatron_detox.plan.hardware import Device
from megatron_detox.plan.memory import activation_bytes

DEFAULT_BANDWIDTH_EFFICIENCY = 0.8
"""Fraction of HBM bandwidth a decode step's weight and cache reads reach."""
RTP_PROMPT_TOKENS = 16
"""Rough length of a RealToxicityPrompts prompt in tokens (half a sentence)."""

# Wang et al. 2022: 100k self-generated samples; the estimate's default when none are configured.
PAPER_NUM_SAMPLES = 100_000


@dataclass(frozen=True)
class GenerationEstimate:
    samples: int
    prompt_tokens: int
    new_tokens: int
    batch_size: int
    replicas: int
    memory_per_gpu_gb: float
    prefill_s: float
    """One batch's prefill."""
    decode_step_s: float
    """Mean decode step of one batch."""
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.samples * self.new_tokens / self.total_s


def kv_bytes_per_token(cfg: ModelConfig, precision: str, tp: int) -> float:
    return 2 * cfg.num_layers * cfg.kv_heads * cfg.head_dim * activation_bytes(precision) / tp


def generation_memory_bytes(cfg: ModelConfig, precision: str, tp: int, batch: int, context: int) -> float:
    return closed_form_num_params(cfg) * activation_bytes(precision) / tp + batch * context * kv_bytes_per_token(
        cfg, precision, tp)


def decode_step_seconds(cfg: ModelConfig, device: Device, precision: str, tp: int, batch: int, context: int,
                        efficiency: float = DEFAULT_EFFICIENCY,
                        bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY) -> float:
    """One new token for ``batch`` rows whose caches hold ``context`` positions."""
    weights = closed_form_num_params(cfg) * activation_bytes(precision) / tp
    read = weights + batch * context * kv_bytes_per_token(cfg, precision, tp)
    memory_time = read / (device.memory_bandwidth_gbs * 1e9 * bandwidth_efficiency)
    compute_time = batch * forward_flops_per_token(cfg, context) / tp / (device.peak_tflops(precision) * 1e12
                                                                         * efficiency)
    # Two all-reduces of the [batch, h] hidden per layer in the TP group.
    comm = 0.0 if tp == 1 else (2 * cfg.num_layers * 2 * (tp - 1) / tp * batch * cfg.hidden_size
                                * activation_bytes(precision) / (device.intra_node_gbs * 1e9))
    return max(memory_time, compute_time) + comm


def estimate_generation(cfg: ModelConfig, device: Device, gpus: int, tp: int, precision: str, samples: int,
                        new_tokens: int, prompt_tokens: int = 1, batch_size: int | None = None,
                        efficiency: float = DEFAULT_EFFICIENCY,
                        bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY) -> GenerationEstimate:
    """``samples`` continuations of ``new_tokens`` after ``prompt_tokens`` (1 = unconditional,
    from BOS) on ``gpus // tp`` replicas; ``batch_size`` None takes the largest power of two
    up to 512 whose weights and cache fit."""
    if gpus % tp or cfg.num_attention_heads % tp or cfg.kv_heads % tp:
        raise UserError(f"generation: --tp {tp} must divide --gpus {gpus}, the heads and query groups of {cfg.name}")
    context = prompt_tokens + new_tokens
    if batch_size is None:
        batch_size = 512
        while batch_size > 1 and generation_memory_bytes(cfg, precision, tp, batch_size, context) > \
                device.usable_gb * 1e9:
            batch_size //= 2
    memory = generation_memory_bytes(cfg, precision, tp, batch_size, context)
    if memory > device.usable_gb * 1e9:
        raise UserError(f"generation: {cfg.name} with --tp {tp} needs {memory / 1e9:.1f} GB per GPU at batch "
                        f"{batch_size}; {device.name} has {device.usable_gb:.1f} GB usable (raise --tp)")
    replicas = gpus // tp
    prefill = batch_size * prompt_tokens * forward_flops_per_token(cfg, math.ceil(prompt_tokens / 2)) / tp / (
        device.peak_tflops(precision) * 1e12 * efficiency)
    steps = [decode_step_seconds(cfg, device, precision, tp, batch_size, prompt_tokens + i, efficiency,
                                 bandwidth_efficiency) for i in range(new_tokens)]
    rounds = math.ceil(samples / (batch_size * replicas))
    total = rounds * (prefill + sum(steps))
    return GenerationEstimate(samples, prompt_tokens, new_tokens, batch_size, replicas, memory / 1e9, prefill,
                              sum(steps) / max(1, len(steps)), total)


@dataclass(frozen=True)
class SgeatEstimate:
    generation: GenerationEstimate
    scoring_s: float
    training_tokens: int
    training_steps: int
    training_s: float
    evaluation_generation: GenerationEstimate
    evaluation_scoring_s: float

    @property
    def total_s(self) -> float:
        return (self.generation.total_s + self.scoring_s + self.training_s + self.evaluation_generation.total_s
                + self.evaluation_scoring_s)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["generation"]["tokens_per_s"] = self.generation.tokens_per_s
        out["total_s"] = self.total_s
        return out


def estimate_sgeat(cfg: ModelConfig, device: Device, gpus: int, train_plan: TrainingPlan, score_rate: float,
                   sgeat: SgeatConfig | None = None, evaluation: EvalConfig | None = None, eval_prompts: int = 1200,
                   generation_tp: int = 1, precision: str = "bf16", epochs: float = 1.0,
                   generate: GenerateConfig | None = None) -> SgeatEstimate:
    """The run of ``generate.num_samples`` samples (the paper's 100k when 0) of at most
    ``generate.max_new_tokens``, ``sgeat.keep_fraction`` kept and trained on with ``train_plan``'s
    layout, then ``eval_prompts`` prompts evaluated. ``score_rate`` is texts per second (a
    Perspective QPS or a local scorer's rate)."""
    sgeat = sgeat or SgeatConfig()
    generate = generate or GenerateConfig()
    evaluation = evaluation or EvalConfig()
    if score_rate <= 0:
        raise UserError(f"scoring rate {score_rate}: must be positive (texts per second)")
    num_samples = generate.num_samples or PAPER_NUM_SAMPLES
    generation = estimate_generation(cfg, device, gpus, generation_tp, precision, num_samples,
                                     generate.max_new_tokens)
    kept_tokens = int(num_samples * sgeat.keep_fraction * generate.max_new_tokens * epochs)
    layout = train_plan.layout
    per_step = layout["global_batch"] * layout["seq_length"]
    steps = math.ceil(kept_tokens / per_step)
    rtp = estimate_generation(cfg, device, gpus, generation_tp, precision, eval_prompts * evaluation.samples,
                              evaluation.max_new_tokens, prompt_tokens=RTP_PROMPT_TOKENS)
    return SgeatEstimate(generation=generation, scoring_s=num_samples / score_rate,
                         training_tokens=kept_tokens, training_steps=steps, training_s=steps * train_plan.step_time_s,
                         evaluation_generation=rtp, evaluation_scoring_s=eval_prompts * evaluation.samples / score_rate)
