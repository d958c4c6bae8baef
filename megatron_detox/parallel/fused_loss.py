"""Output projection + cross-entropy in chunks of tokens: the full logits never exist.

A plain ``loss = cross_entropy(output(h))`` materializes fp32 logits ``[tokens, vocab]``
(SmolLM2, 4 x 256 tokens x 49k: 200 MB) and its backward writes a gradient of the same
size, then reads both again for the two weight/input GEMMs. Here the tokens are cut into
the fewest even chunks of at most ``CHUNK_ELEMENTS`` logits; each chunk is projected into
one reused buffer, its loss summed, and its logit gradient ``softmax - onehot`` (computed
in place) turned at once into the chunk's input gradient and added to the weight
gradient (as Liger-Kernel's and torchtune's chunked losses do). The forward thus does the
backward's GEMMs too and keeps only ``grad_hidden``/``grad_weight``; backward scales
them. Same GEMMs, one chunk's logits alive at a time.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from megatron_detox.parallel.loss import IGNORE_INDEX

# Logit elements per chunk at most: 32M fp32 = 128 MB. Each chunk streams the whole
# output weight three times (logits, input gradient, weight gradient update), so small
# chunks are weight-bound: SmolLM2's 1024 x 49k loss took 1.55 s forward + backward in
# 8 MB chunks and 0.97 s in 128 MB ones at two CPU threads (the three GEMMs alone: ~0.87 s),
# 0.94 s unchunked (docs/benchmarks.md). A long batch or a larger vocabulary still runs
# in chunks of at most this size.
CHUNK_ELEMENTS = 1 << 25


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
    chunks = -(-flat.shape[0] * output.weight.shape[0] // CHUNK_ELEMENTS)
    chunk = max(1, -(-flat.shape[0] // max(chunks, 1)))  # even chunks: no small ragged GEMM at the end
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
        # One logits buffer for every chunk: a fresh one per chunk would cost page faults
        # and cache misses.
        buffer = hidden.new_empty(min(chunk, hidden.shape[0]), weight.shape[0], dtype=torch.float32)
        # Ignored labels are rare (document ends with loss masking): mask only then.
        masked = bool((labels == IGNORE_INDEX).any())
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # [c, hidden]
            y = labels[start:start + chunk]  # [c]
            logits = buffer[:h.shape[0]]
            # fp32 weights project straight into the buffer; others in their dtype, then copied.
            into = logits if weight.dtype == torch.float32 else None
            projected = torch.addmm(bias, h, weight.t(), out=into) if bias is not None else torch.mm(h, weight.t(), out=into)
            if into is None:
                logits.copy_(projected)
            valid = y != IGNORE_INDEX if masked else None
            target = y.clamp(min=0)[:, None]
            picked = logits.gather(1, target).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            # In place: exp(logits - max) becomes the softmax once divided by its row sum.
            probs = logits.sub_(peak).exp_()
            norm = probs.sum(dim=-1, keepdim=True)
            ce = peak.squeeze(1) + norm.log().squeeze(1) - picked
            total += (ce * valid).sum() if valid is not None else ce.sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            # d(sum ce)/d logits = softmax - onehot(target), zero on ignored rows.
            grad = probs.mul_(norm.reciprocal_())
            grad.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=grad.dtype))
            if valid is not None:
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
