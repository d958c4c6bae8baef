"""Token cross-entropy, vocabulary-parallel under TP.

The step loss is the mean over every target token of the global batch (all
micro-batches, all DP ranks). Each micro-batch contributes ``sum(ce) / N`` where ``N``
is the global count of target tokens, known before the step starts, so the sum of
per-micro-batch gradients is exactly the gradient of the global mean.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torch.distributed.tensor import DTensor

IGNORE_INDEX = -100


def masked_labels(labels: Tensor, loss_mask: Tensor | None) -> Tensor:
    """Labels with ``IGNORE_INDEX`` wherever ``loss_mask`` is 0."""
    if loss_mask is None:
        return labels
    return labels.masked_fill(loss_mask == 0, IGNORE_INDEX)


def token_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of cross-entropy over target tokens.

    logits: ``[b, s, vocab]`` (a ``Shard(-1)`` DTensor under TP: each rank holds
    ``vocab/tp`` columns and only max/sum-exp/target-logit scalars are all-reduced);
    labels: ``[b, s]`` with ``IGNORE_INDEX`` for tokens without a loss.
    Returns a scalar: a replicated DTensor under TP, a plain tensor otherwise.

    With sharded logits, forward and backward must both run inside one
    ``torch.distributed.tensor.parallel.loss_parallel()`` context entered by the
    caller (not nested here: leaving a nested context would disable the custom ops
    for the outer one, and the backward would fail).
    """
    flat_labels = labels.reshape(-1)  # [b*s]
    return F.cross_entropy(logits.flatten(0, 1).float(), flat_labels, reduction="sum", ignore_index=IGNORE_INDEX)


def local_value(loss: Tensor) -> Tensor:
    """A detached plain scalar of a (possibly DTensor) loss, for logging."""
    loss = loss.detach()
    return loss.full_tensor() if isinstance(loss, DTensor) else loss


def count_targets(labels: Tensor) -> Tensor:
    return (labels != IGNORE_INDEX).sum()


