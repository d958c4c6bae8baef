"""Materialization, layout-invariant initialization and state dicts of model parts.

Initialization never depends on the layout: each parameter's full value comes from
``models.init.initial_value(plain_name, full_shape, cfg, seed)`` (or from a full
pretrained state dict) and is then distributed to the parameter's DTensor
placements, so TP=2 starts from exactly the TP=1 weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.init import initial_value

InitialValues = Callable[[str, torch.Size], Tensor | None]

TIED_ALIASES = {"output.weight": "tok_embeddings.weight", "tok_embeddings.weight": "output.weight"}


def plain_name(name: str, cfg: ModelConfig) -> str:
    """The name under which the plain model initializes ``name``.

    A tied head on a last pipeline stage (without the embedding) owns a separate copy
    of the embedding weight; it must start from the same value.
    """
    if cfg.tie_word_embeddings and name == "output.weight":
        return "tok_embeddings.weight"
    return name


def _chunks(names: Iterable[str]) -> list[list[str]]:
    """Group state-dict keys by layer so at most one layer's full tensors exist at a time."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
        groups.setdefault(key, []).append(name)
    return list(groups.values())


@torch.no_grad()
def materialize_and_init(part: Transformer, cfg: ModelConfig, device: torch.device, *, seed: int,
                         distributed: bool, pretrained: Mapping[str, Tensor] | None = None,
                         base_names: set[str] | None = None, initial_values: InitialValues | None = None) -> None:
    """Allocate ``part`` (built on meta, already parallelized) on ``device`` and fill it.

    Values, in order of preference: ``pretrained[name]`` (or its tied alias),
    ``initial_values(name, shape)`` (PEFT modules), ``initial_value`` from the seed.
    A name of the base model (``base_names``) missing from ``pretrained`` is a user error.
    """
    requires_grad = {name: p.requires_grad for name, p in part.named_parameters()}
    part.to_empty(device=device)
    part.tie_weights()
    for name, p in part.named_parameters():
        p.requires_grad_(requires_grad[name])
    shapes = {name: t.shape for name, t in part.state_dict().items()}
    for chunk in _chunks(shapes):
        full: dict[str, Any] = {}
        for name in chunk:
            full[name] = _full_value(name, shapes[name], cfg, seed, pretrained, base_names, initial_values)
        if distributed:
            set_model_state_dict(part, full, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            missing_unexpected = part.load_state_dict(full, strict=False)
            assert not missing_unexpected.unexpected_keys, missing_unexpected
    part.tie_weights()


def _full_value(name: str, shape: torch.Size, cfg: ModelConfig, seed: int, pretrained: Mapping[str, Tensor] | None,
                base_names: set[str] | None, initial_values: InitialValues | None) -> Tensor:
    if pretrained is not None:
        for key in (name, TIED_ALIASES.get(name, "") if cfg.tie_word_embeddings else ""):
            if key in pretrained:
                value = pretrained[key]
                if tuple(value.shape) != tuple(shape):
                    raise UserError(f"pretrained weight {key}: shape {tuple(value.shape)} does not match the "
                                    f"model's {tuple(shape)}; check model.* against the checkpoint")
                return value.detach().to(torch.float32)
        if base_names is not None and name in base_names:
            raise UserError(f"pretrained weights lack {name}; the checkpoint does not match model.*")
    if initial_values is not None:
        supplied = initial_values(name, shape)
        if supplied is not None:
            return supplied
    return initial_value(plain_name(name, cfg), shape, cfg, seed)


def gather_full_gradients(named: Iterable[tuple[str, nn.Parameter]],
                          pp_group: dist.ProcessGroup | None) -> dict[str, Tensor]:
    """Full fp32 CPU gradients by plain name (every rank receives all stages' gradients)."""
    grads: dict[str, Tensor] = {}
    for name, p in named:
        if p.grad is not None:
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            grads[name] = g.detach().to("cpu", torch.float32).clone()
    return _merge_over_pipeline(grads, pp_group)


def _merge_over_pipeline(local: dict[str, Tensor], pp_group: dist.ProcessGroup | None) -> dict[str, Tensor]:
    if pp_group is None or dist.get_world_size(pp_group) == 1:
        return local
    gathered: list[dict[str, Tensor] | None] = [None] * dist.get_world_size(pp_group)
    dist.all_gather_object(gathered, local, group=pp_group)
    merged: dict[str, Tensor] = {}
    for stage in gathered:
        assert stage is not None
        merged.update(stage)
    return merged


def gather_full_state_dict(parts: list[nn.Module], pp_group: dist.ProcessGroup | None) -> dict[str, Tensor]:
    """Full plain tensors (CPU) with plain-model names, on every rank.

    Every rank of a part's mesh joins the gathers; with PP the stage dicts are then
    exchanged over the pipeline group (all ranks end with the whole model).
    """
    merged: dict[str, Tensor] = {}
    for part in parts:
        if any(isinstance(p, DTensor) for p in part.parameters()):
            sd = get_model_state_dict(part, options=StateDictOptions(full_state_dict=True))
        else:
            sd = part.state_dict()
        for name, tensor in sd.items():
            assert isinstance(tensor, Tensor), name
            value = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            merged[name] = value.detach().to("cpu", torch.float32).clone()
    return _merge_over_pipeline(merged, pp_group)


def sharded_state_dict(parts: list[nn.Module], cfg: ModelConfig) -> dict[str, Tensor]:
    """DCP-ready state dict (DTensor shards) of all parts, plain-model names.

    A tied weight is always stored under both names (as the plain model's
    ``state_dict`` does) so a checkpoint from any layout loads into any other.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(get_model_state_dict(part))
    if cfg.tie_word_embeddings:
        for name, alias in TIED_ALIASES.items():
            if name in merged and alias not in merged and _owns(parts, alias):
                merged[alias] = merged[name]
    return merged


def _owns(parts: list[nn.Module], name: str) -> bool:
    module_name = name.split(".")[0]
    return any(getattr(part, module_name, None) is not None for part in parts)


def load_sharded_state_dict(parts: list[nn.Module], state_dict: dict[str, Tensor]) -> None:
    """Inverse of :func:`sharded_state_dict` (values already laid out as this layout's shards)."""
    for part in parts:
        keys = set(get_model_state_dict(part).keys())
        own: dict[str, Any] = {k: v for k, v in state_dict.items() if k in keys}
        set_model_state_dict(part, own, options=StateDictOptions(strict=False))
