"""Tensor groups: the unit a conversion reads, converts and writes at a time.

A group is the embeddings, one transformer layer, or the head (final norm and an
untied output). Every format stores a group's tensors together (a Megatron layer's
fused QKV holds q, k and v; a GPT-2 ``c_attn`` too), so converting group by group
keeps peak memory near the largest group instead of the whole model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.state_dict import expected_shapes

Group = tuple[str, list[str]]
"""(label, our parameter names)."""


def tensor_groups(cfg: ModelConfig) -> list[Group]:
    """Every group of ``cfg`` in order; a tied output is not listed (it is the embedding)."""
    names = list(expected_shapes(cfg))
    groups: list[Group] = [("embeddings", [n for n in names if n.startswith(("tok_embeddings.", "pos_embeddings."))])]
    groups += [(f"layer {i}", [n for n in names if n.startswith(f"layers.{i}.")]) for i in range(cfg.num_layers)]
    head = [n for n in names if n.startswith("norm.") or (n == "output.weight" and not cfg.tie_word_embeddings)]
    groups.append(("head", head))
    return groups


def layer_index(group: list[str]) -> int | None:
    """The layer a group belongs to, None for the embeddings or the head."""
    first = group[0]
    return int(first.split(".")[1]) if first.startswith("layers.") else None


class Source(Protocol):
    """A checkpoint being read: its architecture and its tensors, one group at a time.

    ``read`` returns full (unsharded) tensors in our names; vocabulary rows padded to
    ``cfg.padded_vocab_size``, as every loader of ours returns them.
    """

    cfg: ModelConfig
    path: Path

    def read(self, names: list[str]) -> dict[str, Tensor]: ...

    def describe(self, name: str) -> str:
        """Where our tensor ``name`` comes from, for ``--dry-run``."""
        ...


class Sink(Protocol):
    """A checkpoint being written, group by group; ``finish`` makes it appear whole."""

    def write(self, tensors: dict[str, Tensor]) -> None: ...

    def finish(self) -> Path: ...

    def describe(self, name: str) -> str:
        """Where our tensor ``name`` goes, for ``--dry-run``."""
        ...
