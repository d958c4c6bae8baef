"""Activation checkpointing (full / selective) and per-block ``torch.compile``.

Both are applied per transformer block with composable APIs that keep parameter
names unchanged (no ``_checkpoint_wrapped_module`` prefixes), so checkpoints and
the layout-invariant init see plain-model names.

- full: a block keeps only its input; everything inside is recomputed in backward.
- selective: operator-level, as torchtitan's "op" policy — outputs of matmuls and
  attention are saved, cheap elementwise work (norms, activations, dropout) is
  recomputed. Megatron's selective recomputation has the same goal (save the
  expensive, recompute the memory-hungry cheap ops).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from megatron_detox.models.gpt import Transformer

ActivationCheckpointing = Literal["none", "full", "selective"]

_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: Transformer, mode: ActivationCheckpointing) -> None:
    if mode == "none":
        return
    for block in model.layers.values():
        if mode == "full":
            checkpoint(block)
        else:
            checkpoint(block, context_fn=partial(create_selective_checkpoint_contexts, _selective_policy))


def apply_compile(model: Transformer) -> None:
    """Compile each block in place (same names; one graph per block type is reused)."""
    block: nn.Module
    for block in model.layers.values():
        block.compile(fullgraph=False)
