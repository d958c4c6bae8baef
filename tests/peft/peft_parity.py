"""Rank functions for the PEFT parity tests: PEFT on a parallel layout vs the plain model.

Imported by name (pytest puts this folder on sys.path; spawned ranks inherit it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from megatron_detox.config import AdapterConfig, ParallelConfig, PeftConfig, PrefixConfig
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.peft import (
    apply_peft,
    is_peft_name,
    load_peft_checkpoint,
    peft_initial_values,
    peft_transform,
    save_peft_from_model,
)

SEED = 11
GLOBAL_BATCH, MICRO_BATCH, SEQ, STEPS, LR = 4, 2, 8, 2, 1e-2
CONFIGS = {
    "gpt": ModelConfig(name="tiny-gpt", num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100,
                       make_vocab_size_divisible_by=64, max_position_embeddings=32),
    "llama": ModelConfig(name="tiny-llama", num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                         ffn_hidden_size=48, vocab_size=100, make_vocab_size_divisible_by=64,
                         max_position_embeddings=32, position_embedding="rope", normalization="rmsnorm",
                         activation="swiglu", add_bias_linear=False, tie_word_embeddings=False),
}
# init_std > 0 so the down-projections get gradients in the first step too.
PEFT = {
    "adapter": PeftConfig(adapter=AdapterConfig(bottleneck=4, init_std=0.02)),
    "prefix": PeftConfig(prefix=PrefixConfig(length=3, reparameterize=True, hidden_size=8)),
    "prefix-static": PeftConfig(prefix=PrefixConfig(length=3, reparameterize=False)),
}


def method_of(case: str) -> str:
    return case.split("-")[0]


def batches(vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        tokens = torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=g)
        out.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return out


def reference(model_name: str, case: str) -> dict[str, Any]:
    cfg = CONFIGS[model_name]
    model = Transformer(cfg)
    init_weights(model, cfg, SEED)
    apply_peft(model, cfg, method_of(case), PEFT[case], seed=SEED)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.1)
    losses, grads = [], {}
    for step, (tokens, labels) in enumerate(batches(cfg.vocab_size)):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "grads": grads, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def parallel_runs(rank: int, world: int, cases: list[tuple[str, str, dict[str, Any]]], save_root: str
                  ) -> list[dict[str, Any]]:
    """Several cases in one spawn (process start-up dominates on CPU); checkpoints in save_root/<i>."""
    return [parallel_run(model_name, case, layout, f"{save_root}/{i}")
            for i, (model_name, case, layout) in enumerate(cases)]


def parallel_run(model_name: str, case: str, layout: dict[str, Any], save_dir: str) -> dict[str, Any]:
    from megatron_detox.parallel import build_parallel_model, init_distributed

    cfg = CONFIGS[model_name]
    method, peft = method_of(case), PEFT[case]
    parallel = ParallelConfig(**layout)
    env = init_distributed(parallel, cfg)
    per_dp = GLOBAL_BATCH // env.dims.dp_size
    pm = build_parallel_model(cfg, parallel, env, seed=SEED, micro_batch_size=MICRO_BATCH,
                              num_microbatches=per_dp // MICRO_BATCH,
                              transform=peft_transform(cfg, method, peft, seed=SEED),
                              initial_values=peft_initial_values(cfg, method, peft, SEED))
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    initial = pm.full_state_dict()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR, weight_decay=0.1)
    lo = env.dims.dp_rank(env.mesh) * per_dp
    losses, grads = [], {}
    for step, (tokens, labels) in enumerate(batches(cfg.vocab_size)):
        opt.zero_grad()
        loss = pm.forward_backward(tokens[lo:lo + per_dp], labels[lo:lo + per_dp])
        if step == 0:
            grads = pm.full_gradients()
        opt.step()
        losses.append(loss.item())
    final = pm.full_state_dict()
    pp_group = env.mesh["pp"].get_group() if env.dims.pp_enabled else None
    save_peft_from_model(pm.parts, cfg, method, peft, save_dir, group=pp_group)
    # ... and loads back onto a freshly built model of the same layout (each rank keeps its shard).
    fresh = build_parallel_model(cfg, parallel, env, seed=SEED + 1, micro_batch_size=MICRO_BATCH,
                                 num_microbatches=per_dp // MICRO_BATCH,
                                 transform=peft_transform(cfg, method, peft, seed=SEED + 1),
                                 initial_values=peft_initial_values(cfg, method, peft, SEED + 1))
    for part in fresh.parts:
        load_peft_checkpoint(part, cfg, save_dir)
    reloaded = {n: v for n, v in fresh.full_state_dict().items() if is_peft_name(n)}
    return {"losses": losses, "grads": grads, "initial": initial, "final": final, "trainable": trainable,
            "peft_names": sorted(n for n in final if is_peft_name(n)), "reloaded": reloaded}
