"""Dynamic loss scaling for fp16 (as Megatron's ``DynamicGradScaler``).

The loss is multiplied by ``scale`` before backward so small fp16 gradients do not
flush to zero; the gradients are divided by it before clipping. A step whose gradients
hold inf/nan is skipped and the scale halved; after ``growth_interval`` good steps in a
row it doubles. Overflow is detected from the global gradient norm, which the parallel
layer already reduces over every rank, so all ranks skip the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor


@dataclass
class DynamicLossScaler:
    scale: float = 2.0**16
    growth_interval: int = 1000
    backoff_factor: float = 0.5
    growth_factor: float = 2.0
    min_scale: float = 1.0
    good_steps: int = 0

    @torch.no_grad()
    def unscale_(self, params: Iterable[nn.Parameter]) -> None:
        # One foreach call per tensor kind: DTensor and plain gradients cannot be mixed in a call.
        by_kind: dict[bool, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_kind.setdefault(isinstance(p.grad, DTensor), []).append(p.grad)
        for grads in by_kind.values():
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, grad_norm: float) -> bool:
        """Record one step's (unscaled) gradient norm; return True if the step must be skipped."""
        if not math.isfinite(grad_norm):
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
            return True
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return False

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))


def scale_gradients_at(part: nn.Module, scaler: DynamicLossScaler) -> torch.utils.hooks.RemovableHandle | None:
    """Multiply the gradient entering the LM head by ``scaler.scale``.

    Scaling the head's output gradient scales every gradient upstream of it exactly as
    scaling the loss would (the loss itself is computed in fp32 by the parallel layer),
    without reaching into the parallel layer's loss function. Pipeline stages without
    the head get scaled gradients from the next stage. Returns None for such a stage.
    """
    head = getattr(part, "output", None)
    if head is None:
        return None

    def hook(module: nn.Module, grad_output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(g * scaler.scale if g is not None else g for g in grad_output)

    return head.register_full_backward_pre_hook(hook)
