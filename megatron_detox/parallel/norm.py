"""Global gradient norm across TP, DP (DTensor) and PP (all-reduce) ranks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor


def _squared_norm(grads: list[Tensor], device: torch.device) -> Tensor:
    """Sum of squares of ``grads``; DTensors are grouped per mesh and reduced to full values."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    by_mesh: dict[DeviceMesh, list[Tensor]] = defaultdict(list)
    for g in grads:
        if isinstance(g, DTensor):
            by_mesh[g.device_mesh].append(g)
        else:
            # A plain tensor is replicated where it lives (e.g. a norm weight under TP without SP).
            total += torch.linalg.vector_norm(g.detach().float()).double().to(device) ** 2
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type=2.0, foreach=False)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total += norm.double().to(device) ** 2
    return total


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float, *, device: torch.device,
                   pp_group: dist.ProcessGroup | None, also_scale: Sequence[nn.Parameter] = ()) -> Tensor:
    """Total 2-norm of all gradients of the model (every rank gets the same value).

    ``params`` are counted; ``also_scale`` (duplicated tied copies) are only clipped.
    """
    grads = [p.grad for p in params if p.grad is not None]
    squared = _squared_norm(grads, device)
    if pp_group is not None:
        dist.all_reduce(squared, group=pp_group)  # stages hold disjoint parameters
    total = squared.sqrt().float()
    if max_norm > 0:
        coefficient = float(max_norm) / (float(total) + 1e-6)
        if coefficient < 1.0:
            for p in [*params, *also_scale]:
                if p.grad is not None:
                    p.grad.mul_(coefficient)
    return total
