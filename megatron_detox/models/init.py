"""Layout-invariant weight initialization.

Every parameter is drawn from its own generator seeded by ``(seed, parameter name)``,
so the full initial weights are the same whatever the parallel layout: a sharded model
initializes the full tensor from :func:`initial_value` and keeps its shard.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from megatron_detox.models.config import ModelConfig

# Megatron's scaled init: output projections of each residual branch get std / sqrt(2 L).
_SCALED = ("attention.o_proj.weight", "mlp.down_proj.weight")


def parameter_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def initial_value(name: str, shape: torch.Size | tuple[int, ...], cfg: ModelConfig, seed: int) -> torch.Tensor:
    """The initial full fp32 value of parameter ``name`` (a name of the plain model)."""
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name.rsplit(".", 2)[-2] and leaf == "weight":
        return torch.ones(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = cfg.init_method_std
    if name.endswith(_SCALED):
        std = std / math.sqrt(2.0 * cfg.num_layers)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Initialize a plain (unsharded) model in place; tied weights are drawn once."""
    for name, param in model.named_parameters():  # named_parameters yields a tied tensor once
        param.copy_(initial_value(name, param.shape, cfg, seed))
