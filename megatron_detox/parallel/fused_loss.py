"""Output projection + cross-entropy in chunks of tokens: the full logits never exist.

A plain ``loss = cross_entropy(output(h))`` materializes fp32 logits ``[tokens, vocab]``
(SmolLM2, 4 x 256 tokens x 49k: 200 MB) and its backward writes a gradient of the same
size, then reads both again for the two weight/input GEMMs. Here each chunk of
``CHUNK_ELEMENTS / vocab`` tokens is projected, its loss summed, and its logit gradient
``softmax - onehot`` turned at once into the chunk's input gradient and added to the
weight gradient (as Liger-Kernel's and torchtune's chunked losses do). The forward thus
does the backward's GEMMs too and keeps only ``grad_hidden``/``grad_weight``; backward
scales them. Same GEMMs, a few MB of logits live at a time.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from megatron_detox.parallel.loss import IGNORE_INDEX

# Logit elements per chunk: 2M fp32 = 8 MB, which stays in a CPU's L2/L3 between the
# softmax and the two GEMMs that read it.
CHUNK_ELEMENTS = 1 << 21


def fused_loss_applies(output: nn.Module | None) -> TypeGuard[nn.Linear]:
    """Plain local ``nn.Linear`` output layers only: DTensor (TP, FSDP) weights keep the
    vocab-parallel loss and their own collectives; hooked layers keep their forward. The
    trainer takes it in fp32 only: under autocast the plain loss keeps its dtype rules."""
    return (
        type(output) is nn.Linear
        and not hasattr(output.weight, "to_local")
        and not (output._forward_hooks or output._forward_pre_hooks)
    )


def linear_cross_entropy_sum(hidden: Tensor, output: nn.Linear, labels: Tensor) -> Tensor:
    """``cross_entropy(output(hidden), labels, reduction="sum")`` (fp32 logits, ``IGNORE_INDEX``
    skipped), computed chunk by chunk. hidden ``[b, s, h]``, labels ``[b, s]`` -> fp32 scalar."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = max(1, CHUNK_ELEMENTS // output.weight.shape[0])
    return _LinearCrossEntropy.apply(flat, output.weight, output.bias, labels.reshape(-1), chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,  # type: ignore[override]
                chunk: int) -> Tensor:
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.empty_like(weight) if needs_weight else None  # the first chunk writes it
        grad_bias = torch.zeros_like(bias) if needs_bias and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # [c, hidden]
            y = labels[start:start + chunk]  # [c]
            logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
            logits = logits.float()  # [c, vocab]
            valid = y != IGNORE_INDEX
            target = y.clamp(min=0)[:, None]
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, target).squeeze(1)) * valid).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            # d(sum ce)/d logits = softmax - onehot(target), zero on ignored rows; in place.
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=grad.dtype))
            grad.mul_(valid[:, None])
            grad = grad.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[start:start + chunk])
            if grad_weight is not None and start == 0:
                torch.mm(grad.t(), h, out=grad_weight)
            elif grad_weight is not None:
                grad_weight.addmm_(grad.t(), h)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        # Not save_for_backward: these are ours alone (no input or output aliases them), so
        # backward scales them in place instead of allocating a vocabulary-sized product
        # (~1 % of a SmolLM2 training step on CPU: fresh pages for 113 MB), and frees them.
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy_sum: backward ran twice through the same loss "
                               "(its gradients are computed in the forward and handed over once)")
        grads, ctx.grads = ctx.grads, None
        for grad in grads:
            if grad is not None:
                grad.mul_(grad_total.to(grad.dtype))
        return (*grads, None, None)
