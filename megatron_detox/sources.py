"""Readers of model weights, one tensor group at a time: our DCP checkpoints, Hugging Face
safetensors folders and GGUF files.

Shared by the converter (``convert``) and the sharded loader (``parallel.sharded_load``),
so there is one reader per format. Every reader returns full (unsharded) tensors in our
parameter names, vocabulary rows padded to ``cfg.padded_vocab_size``.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.hf import HFReader
from megatron_detox.models.hf_keys import key_map
from megatron_detox.models.state_dict import expected_shapes, pad_vocab
from megatron_detox.train.checkpoint import model_config_from_meta, read_meta, resolve_checkpoint
from megatron_detox.train.safe_dcp import read_metadata, safe_load

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


# ---------------------------------------------------------------- ours (DCP)


class DcpSource:
    """A checkpoint of ours (step, checkpoints or run folder); DCP assembles full tensors from any layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_checkpoint(path)
        meta = read_meta(self.path)
        if meta.get("method", "full") != "full":
            raise UserError(f"{self.path}: a train.method={meta['method']!r} checkpoint holds PEFT modules; "
                            "merge them first")
        self.cfg = model_config_from_meta(meta, self.path)
        self.layout = meta.get("layout")
        stored = read_metadata(self.path).state_dict_metadata
        self.shapes = {key.removeprefix("model."): md.size for key, md in stored.items()
                       if key.startswith("model.") and hasattr(md, "size")}
        for name, shape in expected_shapes(self.cfg).items():
            if name not in self.shapes:
                raise UserError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
            if tuple(self.shapes[name]) != tuple(shape):
                raise UserError(f"{self.path}: tensor {name!r} has shape {list(self.shapes[name])}, "
                                f"expected {list(shape)}")

    def read(self, names: list[str]) -> dict[str, Tensor]:
        model = {name: torch.empty(self.shapes[name]) for name in names}
        safe_load({"model": model}, self.path, no_dist=True)  # only these entries are read
        return model

    def describe(self, name: str) -> str:
        return f"model.{name} @ {self.path.name}"


# ---------------------------------------------------------------- Hugging Face


class HFSource(HFReader):
    """An HF ``gpt2`` / ``llama`` folder (single or sharded safetensors)."""

    def describe(self, name: str) -> str:
        for ours, theirs, transpose in key_map(self.cfg):
            if ours == name:
                return theirs + (" (transposed)" if transpose else "")
        i, leaf = name.split(".")[1], name.rpartition(".")[2]
        return f"transformer.h.{i}.attn.c_attn.{leaf} (a third, transposed)"


# ---------------------------------------------------------------- GGUF


class GGUFSource:
    """A llama GGUF file; each tensor is dequantized when its group is read."""

    def __init__(self, path: str | Path) -> None:
        from megatron_detox.models.gguf_loader import gguf_to_our_name, open_gguf  # noqa: PLC0415

        self.path = Path(path)
        self.reader, self.cfg = open_gguf(self.path)
        self.by_name = {gguf_to_our_name(t.name, self.path): t for t in self.reader.tensors}
        for name in expected_shapes(self.cfg):
            if name not in self.by_name and not (name == "output.weight" and self.cfg.tie_word_embeddings):
                raise UserError(f"{self.path}: tensor for {name!r} is missing")

    def read(self, names: list[str]) -> dict[str, Tensor]:
        from megatron_detox.models.gguf_loader import read_gguf_tensor  # noqa: PLC0415

        tensors = pad_vocab(self.cfg, dict(read_gguf_tensor(self.by_name[n], self.cfg, self.path) for n in names))
        self._release_pages()
        return tensors

    def _release_pages(self) -> None:
        """Drop the file pages this read touched from our RSS (the map stays; they fault back in
        from the file if read again): a map kept for the whole load would otherwise end up
        holding the whole file, on every rank of a sharded load."""
        mapped = getattr(getattr(self.reader, "data", None), "_mmap", None)
        if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)

    def describe(self, name: str) -> str:
        return self.by_name[name].name + (" (RoPE rows restored)" if name.endswith(("q_proj.weight", "k_proj.weight"))
                                          else "")
