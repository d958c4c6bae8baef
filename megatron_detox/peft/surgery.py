"""Apply a PEFT method to a plain model, freeze the base, and move PEFT tensors in and out.

The trainer and ``build_parallel_model(transform=...)`` call :func:`apply_peft` on the
plain model before tensor/pipeline/data parallelism. Afterwards only PEFT parameters
have ``requires_grad``; the optimizer takes ``trainable_parameters(model)``.

PEFT parameters are named as in the plain model (``layers.3.mlp_adapter.up.weight``,
``layers.3.attention.prefix.key``) on every layout: wrapper prefixes added by activation
checkpointing, ``torch.compile`` or FSDP1 are stripped by :func:`canonical_name`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from megatron_detox.config import PeftConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.peft.adapters import BottleneckAdapter, adapter_initial_value, adapter_num_params, apply_adapters
from megatron_detox.peft.prefix import PrefixKV, apply_prefix, prefix_initial_value, prefix_num_params

METHODS = ("full", "adapter", "prefix")
PEFT_MODULES = (BottleneckAdapter, PrefixKV)
_WRAPPER_PARTS = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module", "module"})


def canonical_name(name: str) -> str:
    """The plain-model name of a parameter seen through parallel/compile wrappers."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def is_peft_name(name: str) -> bool:
    name = canonical_name(name)
    return ".attention_adapter." in name or ".mlp_adapter." in name or ".attention.prefix." in name


def apply_peft(
    model: nn.Module, model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig, seed: int = 0,
    compile: bool = False,
) -> nn.Module:
    """Module surgery for ``train.method`` plus freezing; ``full`` leaves the model as it is."""
    if method == "full":
        return model
    if method == "adapter":
        apply_adapters(model, model_cfg, peft_cfg.adapter, seed=seed, compile=compile)
    elif method == "prefix":
        apply_prefix(model, model_cfg, peft_cfg.prefix, seed=seed)
    else:
        raise UserError(f"train.method={method!r}: must be one of {', '.join(METHODS)}")
    mark_trainable(model)
    return model


def peft_transform(
    model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig, seed: int = 0, compile: bool = False
) -> Callable[[nn.Module], nn.Module]:
    """``transform`` for ``build_parallel_model``: surgery and freezing on the plain module."""
    def transform(model: nn.Module) -> nn.Module:
        return apply_peft(model, model_cfg, method, peft_cfg, seed=seed, compile=compile)
    return transform


def mark_trainable(model: nn.Module) -> None:
    """Freeze everything except PEFT parameters (tied embeddings included)."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_peft_name(name))


def has_peft(model: nn.Module) -> bool:
    return any(isinstance(m, PEFT_MODULES) for m in model.modules())


def peft_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(canonical name, parameter)`` of every PEFT parameter this process holds."""
    for name, param in model.named_parameters():
        if is_peft_name(name):
            yield canonical_name(name), param


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def closed_form_trainable(model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig) -> int | None:
    """Trainable parameters of ``method`` from the formulas; None for ``full`` (= all)."""
    if method == "adapter":
        return adapter_num_params(model_cfg, peft_cfg.adapter)
    if method == "prefix":
        return prefix_num_params(model_cfg, peft_cfg.prefix)
    return None


def _full(t: Tensor) -> Tensor:
    # DTensor (TP- or FSDP-sharded) -> the whole tensor; a collective over its mesh.
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def peft_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Full (unsharded) CPU copies of the PEFT tensors of this process's layers.

    With DTensor parameters every rank of their mesh must call this (it gathers).
    """
    return {name: _full(param.detach()).cpu().clone() for name, param in peft_named_parameters(model)}


def _assign(param: Tensor, full: Tensor) -> None:
    if hasattr(param, "device_mesh"):  # DTensor: keep this rank's shard, no communication
        from torch.distributed.tensor import distribute_tensor

        dtensor: Any = param
        param.copy_(distribute_tensor(full.to(param.device, param.dtype), dtensor.device_mesh, dtensor.placements,
                                      src_data_rank=None))
    else:
        param.copy_(full.to(param.device, param.dtype))


@torch.no_grad()
def load_peft_state(model: nn.Module, state: dict[str, Tensor], source: str = "PEFT state") -> None:
    """Copy full PEFT tensors into the model on any layout (each rank keeps its shard).

    Every PEFT parameter of this process must be in ``state``; tensors of layers this
    process does not hold (other pipeline stages) are ignored.
    """
    for name, param in peft_named_parameters(model):
        if name not in state:
            raise UserError(f"{source}: tensor {name!r} is missing; the checkpoint was saved with another "
                            "PEFT configuration (see its peft.json)")
        full = state[name]
        shape = tuple(param.shape)  # a DTensor's shape is the global shape
        if tuple(full.shape) != shape:
            raise UserError(f"{source}: tensor {name!r} has shape {list(full.shape)}, the model expects "
                            f"{list(shape)}; the checkpoint was made for another base model or PEFT config")
        _assign(param, full)


def peft_initial_value(name: str, shape: torch.Size, model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig,
                       seed: int) -> Tensor | None:
    """Initial full value of PEFT parameter ``name``; None for a base-model name."""
    name = canonical_name(name)
    if not is_peft_name(name):
        return None
    if method == "adapter":
        return adapter_initial_value(name, shape, model_cfg, peft_cfg.adapter, seed)
    return prefix_initial_value(name, shape, model_cfg, seed)


def peft_initial_values(
    model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig, seed: int,
    overrides: dict[str, Tensor] | None = None,
) -> Callable[[str, torch.Size], Tensor | None]:
    """``initial_values`` for ``build_parallel_model``: PEFT names get their init, others None.

    ``overrides`` (full tensors by plain name, e.g. from ``prefix_state_from_tokens``) win.
    """
    def initial_values(name: str, shape: torch.Size) -> Tensor | None:
        if overrides is not None and canonical_name(name) in overrides:
            value = overrides[canonical_name(name)]
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"initial value for {name}: shape {tuple(value.shape)} != {tuple(shape)}")
            return value
        return peft_initial_value(name, shape, model_cfg, method, peft_cfg, seed)
    return initial_values


@torch.no_grad()
def init_peft_weights(model: nn.Module, model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig,
                      seed: int) -> None:
    """(Re)initialize PEFT parameters layout-invariantly, e.g. after ``to_empty`` on a sharded model."""
    for name, param in peft_named_parameters(model):
        value = peft_initial_value(name, torch.Size(param.shape), model_cfg, method, peft_cfg, seed)
        assert value is not None
        _assign(param, value)
