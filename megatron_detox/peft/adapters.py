"""Bottleneck adapters (Houlsby et al. 2019) placed in the transformer blocks' seams.

Each adapted sublayer output ``y`` ([batch, seq, hidden]) becomes
``y + dropout(up(act(down(y))))`` before the block's own dropout and residual add.
The up-projection starts at zero (or ``N(0, init_std)``), so with ``init_std == 0`` the
adapted model computes exactly the base model's function.

"Fused": the adapter is a submodule called from ``TransformerBlock.forward`` (no hooks),
and with ``compile=True`` its down -> activation -> up -> residual chain is one
``torch.compile`` region (``fullgraph``: a graph break would be an error, not a slowdown).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megatron_detox.config import AdapterConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import TransformerBlock
from megatron_detox.models.init import parameter_seed

SEAMS = {"attention": ("attention_adapter",), "mlp": ("mlp_adapter",), "both": ("attention_adapter", "mlp_adapter")}
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def transformer_layers(model: nn.Module) -> dict[str, TransformerBlock]:
    """Global layer index -> block, for a whole model or one pipeline stage of it."""
    layers = cast(nn.ModuleDict, model.get_submodule("layers"))
    return {key: cast(TransformerBlock, block) for key, block in layers.items()}


class BottleneckAdapter(nn.Module):
    """``y + dropout(up(act(down(y))))`` on ``[batch, seq, hidden]``; parameters ``down``, ``up``."""

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: Tensor) -> Tensor:
        h = _ACTIVATIONS[self.activation](self.down(y))  # [batch, seq, bottleneck]
        return y + self.dropout(self.up(h))  # [batch, seq, hidden]


def adapter_initial_value(name: str, shape: torch.Size, model_cfg: ModelConfig, cfg: AdapterConfig,
                          seed: int) -> Tensor:
    """Initial full fp32 value of adapter parameter ``name`` (plain-model name), layout-invariant.

    down ~ N(0, model init std), up ~ N(0, ``init_std``) (zero by default), biases zero.
    """
    if name.endswith("bias"):
        return torch.zeros(shape)
    std = model_cfg.init_method_std if name.endswith("down.weight") else cfg.init_std
    if std == 0.0:
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def adapter_layer_ids(model_cfg: ModelConfig, cfg: AdapterConfig) -> list[int]:
    """The layers to adapt, validated against the model."""
    if cfg.layers is None:
        return list(range(model_cfg.num_layers))
    bad = [i for i in cfg.layers if not 0 <= i < model_cfg.num_layers]
    if bad:
        raise UserError(f"peft.adapter.layers={cfg.layers}: layer {bad[0]} does not exist; "
                        f"use indices in [0, {model_cfg.num_layers - 1}] or null for all layers")
    return sorted(set(cfg.layers))


def check_adapter_config(model_cfg: ModelConfig, cfg: AdapterConfig) -> None:
    if cfg.bottleneck < 1:
        raise UserError(f"peft.adapter.bottleneck={cfg.bottleneck}: must be >= 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"peft.adapter.dropout={cfg.dropout}: must be in [0, 1)")
    if cfg.init_std < 0.0:
        raise UserError(f"peft.adapter.init_std={cfg.init_std}: must be >= 0 (0 starts at the base model)")
    if cfg.activation not in _ACTIVATIONS:
        raise UserError(f"peft.adapter.activation={cfg.activation!r}: must be one of {', '.join(_ACTIVATIONS)}")
    adapter_layer_ids(model_cfg, cfg)


def apply_adapters(
    model: nn.Module, model_cfg: ModelConfig, cfg: AdapterConfig, seed: int = 0, compile: bool = False
) -> nn.Module:
    """Put a :class:`BottleneckAdapter` into the selected seams of every selected layer, in place.

    Works on a plain model or one pipeline stage of it (layers it lacks are skipped).
    Parameters are created on the device/dtype of the block's weights; on the meta device
    they stay uninitialized until ``initial_values``/:func:`megatron_detox.peft.surgery.init_peft_weights`.
    """
    check_adapter_config(model_cfg, cfg)
    layers = transformer_layers(model)
    for layer_id in adapter_layer_ids(model_cfg, cfg):
        if str(layer_id) not in layers:  # another pipeline stage owns it
            continue
        block = layers[str(layer_id)]
        reference = block.attention.o_proj.weight
        for seam in SEAMS[cfg.placement]:
            if not isinstance(getattr(block, seam), nn.Identity):
                raise RuntimeError(f"layers.{layer_id}.{seam} is already adapted")  # internal misuse
            adapter = BottleneckAdapter(
                model_cfg.hidden_size, cfg.bottleneck, cfg.activation, cfg.dropout,
                device=reference.device, dtype=reference.dtype,
            )
            if reference.device.type != "meta":  # on meta: build_parallel_model's initial_values fills it
                with torch.no_grad():
                    for name, param in adapter.named_parameters():
                        full_name = f"layers.{layer_id}.{seam}.{name}"
                        param.copy_(adapter_initial_value(full_name, param.shape, model_cfg, cfg, seed))
            if compile:
                adapter.compile(fullgraph=True)
            setattr(block, seam, adapter)
    return model


def adapter_num_params(model_cfg: ModelConfig, cfg: AdapterConfig) -> int:
    """Closed form: per adapter ``2 h r + r + h`` (down and up weights and biases)."""
    h, r = model_cfg.hidden_size, cfg.bottleneck
    per_adapter = 2 * h * r + r + h
    return len(adapter_layer_ids(model_cfg, cfg)) * len(SEAMS[cfg.placement]) * per_adapter
