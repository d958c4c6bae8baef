"""Build models and load pretrained weights from a preset name, a GGUF file or an HF folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.models.presets import PRESETS
from megatron_detox.models.summary import build_meta_model

StateDict = dict[str, Tensor]


def _embedded_smollm2() -> tuple[ModelConfig, StateDict]:
    from megatron_detox.models.embedded import ensure_embedded_gguf
    from megatron_detox.models.gguf_loader import load_gguf

    return load_gguf(ensure_embedded_gguf())


# Presets that come with pretrained weights, and where those weights come from.
PRETRAINED: dict[str, Callable[[], tuple[ModelConfig, StateDict]]] = {
    "smollm2-135m": _embedded_smollm2,
}


def build_model(
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> Transformer:
    """Build ``Transformer(cfg)`` on meta, then allocate it on ``device``.

    With ``seed`` the weights are initialized layout-invariantly (``models.init``);
    without, they are uninitialized memory, to be filled by ``load_state_dict``.
    """
    model = build_meta_model(cfg).to(dtype=dtype).to_empty(device=device)
    model.tie_weights()  # to_empty allocates the tied pair twice; share it again
    if seed is not None:
        init_weights(model, cfg, seed)
    return model


def resolve_weights(spec: str) -> tuple[ModelConfig, StateDict]:
    """``(config, state_dict)`` for a preset with weights, a ``.gguf`` file or an HF folder."""
    if spec in PRETRAINED:
        cfg, state = PRETRAINED[spec]()
        preset = PRESETS[spec]
        return cfg.replace(name=spec, init_method_std=preset.init_method_std), state
    if spec in PRESETS:
        with_weights = ", ".join(PRETRAINED)
        raise UserError(f"model preset {spec!r} has no pretrained weights; train it from random init, "
                        f"or load a checkpoint (a .gguf file or a Hugging Face folder); presets with "
                        f"weights: {with_weights}")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        from megatron_detox.models.gguf_loader import load_gguf

        return load_gguf(path)
    if path.is_dir():
        from megatron_detox.models.hf import load_hf

        return load_hf(path)
    raise UserError(f"{spec}: not a model preset, a .gguf file or a Hugging Face folder with config.json "
                    f"(presets with weights: {', '.join(PRETRAINED)})")


def load_model(
    spec: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[Transformer, ModelConfig]:
    """Load pretrained weights named by ``spec``; the model is returned in eval mode."""
    cfg, state = resolve_weights(spec)
    model = build_model(cfg, device=device, dtype=dtype)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise UserError(f"{spec}: {what} ({len(missing)} missing, {len(unexpected)} unexpected)")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model.eval(), cfg
