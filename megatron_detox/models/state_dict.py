"""Checks and small transforms on state dicts in our parameter names (shared by the loaders)."""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.summary import build_meta_model

VOCAB_PARAMS = ("tok_embeddings.weight", "output.weight")


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Shape of every state-dict entry of ``Transformer(cfg)`` (built on meta, no memory)."""
    return {name: tensor.shape for name, tensor in build_meta_model(cfg).state_dict().items()}


def check_state_dict(cfg: ModelConfig, state: dict[str, Tensor], source: str) -> None:
    """Raise a UserError naming ``source`` and the tensor if ``state`` does not fit ``cfg``."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: tensor {missing[0]!r} is missing{more}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{source}: unexpected tensor {unexpected[0]!r} for this architecture")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise UserError(f"{source}: tensor {name!r} has shape {list(state[name].shape)}, "
                            f"expected {list(shape)}")


def pad_vocab(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero-pad the vocabulary rows up to ``cfg.padded_vocab_size``; tied tensors stay shared."""
    padded: dict[int, Tensor] = {}  # id(original) -> padded, so a tied pair stays one tensor
    out = dict(state)
    for name in VOCAB_PARAMS:
        weight = state.get(name)
        if weight is None or weight.shape[0] != cfg.vocab_size:
            continue
        if id(weight) not in padded:
            extra = cfg.padded_vocab_size - weight.shape[0]
            padded[id(weight)] = torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])]) if extra else weight
        out[name] = padded[id(weight)]
    return out


def unpad_vocab(cfg: ModelConfig, weight: Tensor) -> Tensor:
    """The first ``cfg.vocab_size`` rows of a padded embedding/output weight."""
    return weight[: cfg.vocab_size]
