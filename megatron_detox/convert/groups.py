"""Tensor groups (the unit a conversion reads, converts and writes at a time) and sinks.

Groups and sources live in :mod:`megatron_detox.sources` (the sharded loader reads them too).

A group is the embeddings, one transformer layer, or the head (final norm and an
untied output). Every format stores a group's tensors together (a Megatron layer's
fused QKV holds q, k and v; a GPT-2 ``c_attn`` too), so converting group by group
keeps peak memory near the largest group instead of the whole model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor

from megatron_detox.sources import Group, Source, layer_index, tensor_groups

__all__ = ["Group", "Sink", "Source", "layer_index", "tensor_groups"]


class Sink(Protocol):
    """A checkpoint being written, group by group; ``finish`` makes it appear whole."""

    def write(self, tensors: dict[str, Tensor]) -> None: ...

    def finish(self) -> Path: ...

    def describe(self, name: str) -> str:
        """Where our tensor ``name`` goes, for ``--dry-run``."""
        ...
