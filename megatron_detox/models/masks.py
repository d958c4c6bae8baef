"""Boolean attention masks (True = attend) shared by the model and its KV caches."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(query_pos: Tensor, key_len: int, prefix_len: int = 0) -> Tensor:
    """Boolean mask ``[seq, prefix_len + key_len]``: query at slot p sees keys at slots <= p.

    Prefix slots are always visible.
    """
    keys = torch.arange(key_len, device=query_pos.device)
    mask = keys[None, :] <= query_pos[:, None]
    if prefix_len:
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix_len), mask], dim=1)
    return mask
