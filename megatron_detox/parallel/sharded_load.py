"""One loader for pretrained weights on any layout: no rank ever holds the whole model.

build on meta -> ``transform`` (PEFT surgery) -> layout (pipeline stage, TP plans) ->
allocate only this rank's shards on its device -> stream the weights in:

- a DCP checkpoint of ours: DCP plans the reads from the DTensor shards, so each rank
  reads only the slices it holds (at most one stored tensor in flight);
- a Hugging Face safetensors folder or a GGUF file (:mod:`megatron_detox.sources`): read
  one tensor group (a layer) at a time, each full tensor cut to the local slice and dropped.

Peak host memory per rank is its shard plus one tensor group, never the full model.
The same sources feed training from pretrained weights (:class:`SourceTensors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.sources import GGUFSource, HFSource, Source, tensor_groups

TIED_OUTPUT = "output.weight"
EMBEDDING = "tok_embeddings.weight"


@dataclass
class WeightSource:
    """Where a model's weights come from, opened (architecture read) but nothing loaded yet."""

    cfg: ModelConfig
    name: str
    """What is loaded, for manifests and reports."""
    tensors: Source | None = None
    """A per-group reader of full tensors (HF, GGUF); None for a DCP checkpoint of ours."""
    checkpoint: Path | None = None
    """A DCP checkpoint folder of ours (read as local slices)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's ``meta.json`` (its ``method`` and ``peft`` config)."""


def open_weights(model: str | None = None, checkpoint: str | Path | None = None) -> WeightSource:
    """Open ``checkpoint`` (ours) or ``model`` (a preset with weights, ``.gguf`` file or HF folder)."""
    from megatron_detox.models.loading import PRETRAINED  # noqa: PLC0415
    from megatron_detox.models.presets import PRESETS  # noqa: PLC0415
    from megatron_detox.train.checkpoint import model_config_from_meta, read_meta, resolve_checkpoint  # noqa: PLC0415

    if checkpoint is not None:
        ckpt = resolve_checkpoint(checkpoint)
        meta = read_meta(ckpt)
        return WeightSource(model_config_from_meta(meta, ckpt), str(ckpt), checkpoint=ckpt, meta=meta)
    if model is None:
        raise UserError("no model given: pass --model (a preset, .gguf or HF folder) or --checkpoint")
    if model in PRETRAINED:
        from megatron_detox.models.embedded import ensure_embedded_gguf  # noqa: PLC0415

        gguf = GGUFSource(ensure_embedded_gguf())
        preset = PRESETS[model]
        gguf.cfg = gguf.cfg.replace(name=model, init_method_std=preset.init_method_std)
        return WeightSource(gguf.cfg, model, tensors=gguf)
    if model in PRESETS:
        raise UserError(f"model preset {model!r} has no pretrained weights; train it from random init, or load a "
                        f"checkpoint (a .gguf file or a Hugging Face folder); presets with weights: "
                        f"{', '.join(PRETRAINED)}")
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        gguf = GGUFSource(path)
        return WeightSource(gguf.cfg, model, tensors=gguf)
    if path.is_dir():
        hf = HFSource(path)
        return WeightSource(hf.cfg, model, tensors=hf)
    raise UserError(f"{model}: not a model preset, a .gguf file or a Hugging Face folder with config.json "
                    f"(presets with weights: {', '.join(PRETRAINED)})")


def source_name(name: str, cfg: ModelConfig) -> str:
    """The source tensor a parameter is filled from (a tied head is the embedding)."""
    return EMBEDDING if cfg.tie_word_embeddings and name == TIED_OUTPUT else name


@torch.no_grad()
def copy_into_shard(dst: Tensor, full: Tensor, what: str) -> None:
    """Copy this rank's slice of the full tensor ``full`` into ``dst`` (a DTensor shard or a plain tensor)."""
    if tuple(full.shape) != tuple(dst.shape):  # a DTensor's shape is the global one
        raise UserError(f"{what}: shape {list(full.shape)} does not match the model's {list(dst.shape)}; "
                        "the weights belong to another architecture")
    if isinstance(dst, DTensor):
        shape, offset = compute_local_shape_and_global_offset(full.shape, dst.device_mesh, dst.placements)
        full = full[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))]
        dst = dst.to_local()
    dst.copy_(full)


def fill_from_tensors(parts: list[nn.Module], source: Source, cfg: ModelConfig, what: str) -> set[str]:
    """Fill the base-model parameters of ``parts`` from ``source``, one tensor group at a time.

    Returns the names filled; a base parameter the source lacks is a UserError.
    """
    local: dict[str, list[Tensor]] = {}
    for part in parts:
        for name, tensor in part.state_dict(keep_vars=True).items():
            local.setdefault(name, []).append(tensor)
    filled: set[str] = set()
    for _, group in tensor_groups(cfg):
        wanted = {name: source_name(name, cfg) for name in local if source_name(name, cfg) in group}
        if not wanted:
            continue  # another pipeline stage's layer: not even read
        full = source.read(sorted(set(wanted.values())))
        for name, key in wanted.items():
            if key not in full:
                raise UserError(f"{what}: tensor {key!r} is missing")
            for dst in local[name]:
                copy_into_shard(dst, full[key], f"{what}: tensor {key!r}")
            filled.add(name)
        del full
    return filled


def fill_from_checkpoint(parts: list[nn.Module], ckpt: Path, cfg: ModelConfig) -> None:
    """Fill ``parts`` from a DCP checkpoint of ours, reading only this rank's slices (collective)."""
    from megatron_detox.parallel.state import sharded_state_dict  # noqa: PLC0415
    from megatron_detox.train.checkpoint import load_checkpoint_state  # noqa: PLC0415
    from megatron_detox.train.safe_dcp import read_metadata  # noqa: PLC0415

    metadata = read_metadata(ckpt)
    stored = metadata.state_dict_metadata
    state = sharded_state_dict(parts, cfg)
    for name, tensor in state.items():
        md = stored.get(f"model.{name}")
        if md is None or not hasattr(md, "size"):
            raise UserError(f"{ckpt}: tensor {name!r} is missing from the checkpoint; it does not hold the model "
                            "its meta.json describes")
        if tuple(md.size) != tuple(tensor.shape):
            raise UserError(f"{ckpt}: tensor {name!r} has shape {list(md.size)}, the model {list(tensor.shape)}")
    for index, info in (metadata.storage_data or {}).items():
        if index.fqn.removeprefix("model.") in state and not (ckpt / info.relative_path).is_file():
            raise UserError(f"{ckpt / info.relative_path}: missing; it holds shards of tensor "
                            f"{index.fqn.removeprefix('model.')!r} that this layout needs (copy the whole "
                            "checkpoint folder)")
    load_checkpoint_state(ckpt, {"model": state})


def materialize(parts: list[nn.Module], device: torch.device) -> None:
    """Allocate the (meta, already laid out) ``parts`` on ``device``: only the local shards."""
    for part in parts:
        requires_grad = {name: p.requires_grad for name, p in part.named_parameters()}
        part.to_empty(device=device)
        tie = getattr(part, "tie_weights", None)
        if tie is not None:
            tie()  # to_empty allocates a tied pair twice; share it again
        for name, p in part.named_parameters():
            p.requires_grad_(requires_grad[name])


def load_weights(parts: list[nn.Module], weights: WeightSource) -> None:
    """Fill the materialized ``parts`` (one rank's share of any layout) from ``weights``.

    PEFT tensors come from the checkpoint when it holds them (an adapter/prefix run of
    ours); otherwise the caller loads them (``--peft``) after this.
    """
    if weights.checkpoint is not None:
        fill_from_checkpoint(parts, weights.checkpoint, weights.cfg)
        return
    assert weights.tensors is not None
    filled = fill_from_tensors(parts, weights.tensors, weights.cfg, weights.name)
    from megatron_detox.peft import is_peft_name  # noqa: PLC0415

    for part in parts:
        for name in part.state_dict():
            if name not in filled and not is_peft_name(name):
                raise UserError(f"{weights.name}: tensor {name!r} is missing")


class SourceTensors(Mapping[str, Tensor]):
    """Full tensors of a source by our name, read when asked for (one group held at a time).

    For ``parallel.state.materialize_and_init``, which asks layer by layer: training
    from pretrained weights never holds the full state dict either. ``read(names)``
    returns full tensors of one group (a :class:`~megatron_detox.sources.Source`'s ``read``).
    """

    def __init__(self, read: Callable[[list[str]], dict[str, Tensor]], cfg: ModelConfig) -> None:
        self.read, self.cfg = read, cfg
        self.groups = {name: names for _, names in tensor_groups(cfg) for name in names}
        self._cached: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.groups:
            raise KeyError(name)
        if name not in self._cached:
            self._cached = {}  # drop the previous group before reading the next
            self._cached = self.read(self.groups[name])
        return self._cached[name]

    def __contains__(self, name: object) -> bool:
        return name in self.groups

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)
