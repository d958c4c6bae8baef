"""Rank functions for the CPU/gloo parity tests: a parallel layout vs the plain model.

Each rank builds the same plain reference model (same seed, layout-invariant init),
runs it on the whole global batch, and compares its own parallel run: loss, full
gradients, gradient norm and a short AdamW loss curve.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from megatron_detox.config import ParallelConfig
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.parallel import build_parallel_model, init_distributed

SEED = 7
SEQ = 16
GLOBAL_BATCH = 8
MICRO_BATCH = 2
LR = 1e-2
CLIP = 1.0

CONFIGS: dict[str, ModelConfig] = {
    # Megatron GPT family: learned positions, LayerNorm, GELU, biases, tied embeddings.
    "gpt": ModelConfig(name="tiny-gpt", num_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=100,
                       make_vocab_size_divisible_by=64, max_position_embeddings=32),
    # Llama family: RoPE, RMSNorm, SwiGLU, GQA (2 query groups split by TP), no biases, untied head.
    "llama": ModelConfig(name="tiny-llama", num_layers=4, hidden_size=32, num_attention_heads=4,
                         num_query_groups=2, ffn_hidden_size=48, vocab_size=100, make_vocab_size_divisible_by=64,
                         max_position_embeddings=32, position_embedding="rope", normalization="rmsnorm",
                         activation="swiglu", add_bias_linear=False, tie_word_embeddings=False),
}


def make_batches(steps: int, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed random global batches with some masked targets (uneven per DP rank on purpose)."""
    g = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=g)
        mask = (torch.rand(GLOBAL_BATCH, SEQ, generator=g) > 0.2).long()
        mask[0, :] = 0  # a row without any target
        labels = tokens[:, 1:].clone()
        labels[1, :3] = -100
        batches.append((tokens[:, :-1].contiguous(), labels, mask))
    return batches


def reference_run(cfg: ModelConfig, steps: int) -> dict[str, Any]:
    model = Transformer(cfg)
    init_weights(model, cfg, SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    losses, norms, first_grads = [], [], {}
    for step, (tokens, labels, mask) in enumerate(make_batches(steps, cfg.vocab_size)):
        opt.zero_grad()
        target = labels.masked_fill(mask == 0, -100)
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "norms": norms, "grads": first_grads,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def parallel_run(rank: int, world: int, model_name: str, layout: dict[str, Any], steps: int) -> dict[str, Any]:
    cfg = CONFIGS[model_name]
    layout = dict(layout)
    precision = layout.pop("precision", "fp32")  # a build_parallel_model argument, not a ParallelConfig field
    parallel = ParallelConfig(**layout)
    env = init_distributed(parallel, cfg)
    dims = env.dims
    per_dp = GLOBAL_BATCH // dims.dp_size
    pm = build_parallel_model(cfg, parallel, env, seed=SEED, micro_batch_size=MICRO_BATCH,
                              num_microbatches=per_dp // MICRO_BATCH, precision=precision)
    initial = pm.full_state_dict()
    opt = torch.optim.AdamW(list(pm.parameters()), lr=LR, weight_decay=0.1)
    lo = dims.dp_rank(env.mesh) * per_dp
    losses, norms, grads, dtypes = [], [], {}, []
    for step, (tokens, labels, mask) in enumerate(make_batches(steps, cfg.vocab_size)):
        opt.zero_grad()
        loss = pm.forward_backward(tokens[lo:lo + per_dp], labels[lo:lo + per_dp], mask[lo:lo + per_dp])
        if step == 0:
            grads = pm.full_gradients()
            # Master weights and their (reduced) gradients, as the optimizer sees them.
            dtypes = sorted({str(p.dtype) for p in pm.parameters()} | {str(p.grad.dtype) for p in pm.parameters()
                                                                        if p.grad is not None})
        norms.append(pm.clip_grad_norm_(CLIP).item())
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "norms": norms, "grads": grads, "initial": initial, "final": pm.full_state_dict(),
            "dtypes": dtypes}


def run_layouts(rank: int, world: int, jobs: list[tuple[str, str, dict[str, Any]]], steps: int) -> dict[str, Any]:
    """Several (model, layout) runs in one spawn: start-up dominates a 2-core CPU box.

    A failure is returned as its traceback so the other layouts still report.
    """
    import traceback

    results: dict[str, Any] = {}
    for model_name, layout_name, layout in jobs:
        try:
            results[f"{model_name}/{layout_name}"] = parallel_run(rank, world, model_name, layout, steps)
        except Exception:  # noqa: BLE001 - reported by the test, with the traceback
            results[f"{model_name}/{layout_name}"] = {"error": traceback.format_exc()}
    return results
