"""Optimizer state for DCP: one optimizer per model part, keyed by plain parameter names.

``flatten_optimizer_state_dict`` keys every entry by the parameter's plain-model name
(``state.layers.0.mlp.up_proj.weight.exp_avg``), so the per-part dicts merge into one
and DCP reshards each entry to whatever layout loads it. A tied embedding is stored
under both of its names, as the model state is, so a checkpoint from a layout where the
pipeline's last stage owns a copy (``output.weight``) loads where it does not, and back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from megatron_detox.parallel import ParallelModel

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_TIED = ("tok_embeddings.weight", "output.weight")


def get_optim_state(pm: ParallelModel, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part, optimizer in zip(pm.parts, optimizers, strict=True):
        merged.update(get_optimizer_state_dict(part, optimizer, options=_OPTIONS))
    if pm.config.tie_word_embeddings:
        for key in list(merged):
            for name, alias in (_TIED, _TIED[::-1]):
                for section in ("state.", "param_groups."):
                    if key.startswith(section + name + "."):
                        merged.setdefault(section + alias + key[len(section + name):], merged[key])
    return merged


def set_optim_state(pm: ParallelModel, optimizers: list[torch.optim.Optimizer], state: dict[str, Any]) -> None:
    for part, optimizer in zip(pm.parts, optimizers, strict=True):
        own = get_optimizer_state_dict(part, optimizer, options=_OPTIONS).keys()
        set_optimizer_state_dict(part, optimizer, {k: state[k] for k in own}, options=_OPTIONS)
