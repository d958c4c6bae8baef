"""AdamW with Megatron's parameter groups, and the learning-rate schedules.

Weight decay applies to matrices only: biases and norm weights (every tensor with
fewer than two dimensions) are in a no-decay group, as in Megatron-LM. The learning
rate is a pure function of the step (:func:`lr_at`), so resuming needs only the step.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from megatron_detox.config import OptimConfig
from megatron_detox.errors import UserError


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices, undecayed rest."""
    # Keyed by (decayed, is DTensor): the foreach kernels cannot mix DTensor and plain
    # tensors in one group, and under TP some parameters (replicated norms) stay plain.
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, param in named_parameters:
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        decayed = not (param.ndim < 2 or name.endswith(".bias"))
        groups.setdefault((decayed, isinstance(param, DTensor)), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0}
            for (decayed, _), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def _apex_fused_adam() -> type | None:
    try:
        from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
    except ImportError:
        return None
    return FusedAdam  # type: ignore[no-any-return]


def build_optimizer(named_parameters: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW: apex FusedAdam on CUDA when importable, else torch's fused (plain tensors) or foreach."""
    groups = param_groups(named_parameters, cfg.weight_decay)
    if not groups:
        raise UserError("train.freeze: every parameter is frozen; nothing would train")
    params = [p for group in groups for p in group["params"]]
    on_cuda = all(p.device.type == "cuda" for p in params)
    apex_adam = _apex_fused_adam() if on_cuda else None
    if apex_adam is not None and not any(isinstance(p, DTensor) for p in params):
        return apex_adam(groups, adam_w_mode=True, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),  # type: ignore[no-any-return]
                         eps=cfg.eps)
    # The fused kernel runs on CPU and CUDA for plain tensors; DTensor parameters take the
    # foreach path, which DTensor implements by sharding propagation.
    fused = not any(isinstance(p, DTensor) for p in params) and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused,
                             foreach=None if fused else True)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up is linear from ``lr / warmup_steps`` to ``lr``; then constant, cosine or
    linear decay to ``min_lr`` at the last step, or WSD (warm-up, stable, then linear
    decay to ``min_lr`` over the last ``decay_fraction`` of the steps after warm-up).
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "wsd":
        decay_len = max(int(round(cfg.decay_fraction * decay_steps)), 1)
        stable_end = total_steps - decay_len
        if step < stable_end:
            return cfg.lr
        progress = min((step - stable_end + 1) / decay_len, 1.0)
    else:
        # progress reaches 1 at the last step (total_steps - 1), so the run ends at min_lr.
        progress = min((step - warmup) / max(decay_steps - 1, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr - (cfg.lr - cfg.min_lr) * progress


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> int:
    """Set ``requires_grad=False`` on parameters whose name matches a glob; return how many.

    A pattern that matches nothing is a typo, reported rather than ignored.
    """
    frozen = 0
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise UserError(f"train.freeze: pattern {pattern!r} matches no parameter "
                            f"(names look like {names[0]!r}, {names[-1]!r})")
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)
            frozen += 1
    return frozen
