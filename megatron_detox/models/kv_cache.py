"""Preallocated key/value cache for incremental decoding."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from megatron_detox.models.masks import causal_mask


class KVCache:
    """Per-layer key/value buffers written in place at given slots.

    ``keys[layer_id]`` and ``values[layer_id]`` are ``[batch, kv_heads, max_len, head_dim]``:
    head-major, so the keys one head attends over are contiguous (a decode step at 512
    cached slots runs its attention ~30% faster than over a slot-major cache).
    ``kv_heads`` is the number of key/value heads *held by this process* (divided by the
    tensor-parallel degree on a sharded model); layers absent from ``layer_ids`` (other
    pipeline stages) get no buffer. With prefix tuning the first slots hold the prefix.
    """

    def __init__(
        self,
        layer_ids: Iterable[int],
        batch_size: int,
        max_len: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, kv_heads, max_len, head_dim)
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.batch_size = batch_size
        self.max_len = max_len

    @staticmethod
    def num_bytes(num_layers: int, batch_size: int, max_len: int, kv_heads: int,
                  head_dim: int, dtype: torch.dtype = torch.float32) -> int:
        """Memory the cache for these sizes needs, before allocating it."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * batch_size * max_len * kv_heads * head_dim * element

    def update(self, layer_id: int, cache_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` ([batch, seq, kv_heads, head_dim]) at slots ``cache_pos`` ([seq]).

        Returns the whole buffers ([batch, kv_heads, max_len, head_dim]); the caller's
        attention mask hides slots that are not yet written.
        """
        keys, values = self.keys[layer_id], self.values[layer_id]
        keys.index_copy_(2, cache_pos, k.transpose(1, 2).to(keys.dtype))
        values.index_copy_(2, cache_pos, v.transpose(1, 2).to(values.dtype))
        return keys, values

    def row_lengths(self) -> list[int] | None:
        """For a one-token step: how many leading slots each row attends over, when the
        attention should run row by row over only those slots (rows of very different
        lengths, where one masked call would read every row up to the longest); 0 skips a
        row (its output is zeros). None (the default): one call over all slots, masked."""
        return None

    def default_mask(self, cache_pos: Tensor, kv_len: int) -> Tensor | None:
        """The mask when the caller gave none: causal over the slots, which also hides
        the slots not yet written (``update`` returns whole buffers)."""
        return causal_mask(cache_pos, kv_len)
