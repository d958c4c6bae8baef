"""A model and its tokenizer, ready for inference, from what a user names on the command line.

One loader for ``generate``, ``eval`` and the lm-eval adapter:

- ``model``: a preset with weights (``smollm2-135m``), a ``.gguf`` file or a Hugging Face folder;
- ``checkpoint``: a checkpoint of ours (a step, ``checkpoints`` or run folder) — full
  fine-tuning, or an adapter/prefix run (its PEFT modules are rebuilt from the config the
  checkpoint records);
- ``peft``: a PEFT checkpoint folder (``run_dir/peft``) applied on top of ``model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.tokenizers.base import Tokenizer


@dataclass
class InferenceModel:
    model: Transformer
    """In eval mode, on the requested device and dtype."""
    tokenizer: Tokenizer
    config: ModelConfig
    source: str
    """What was loaded, for manifests and reports."""


def load_for_inference(
    model: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    peft: str | Path | None = None,
    tokenizer: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> InferenceModel:
    if checkpoint is not None:
        module, cfg, source = _load_checkpoint(checkpoint, dtype, device)
    elif model is not None:
        from megatron_detox.models.loading import load_model

        module, cfg = load_model(model, dtype=dtype, device=device)
        source = model
    else:
        raise UserError("no model given: pass --model (a preset, .gguf or HF folder) or --checkpoint")
    if peft is not None:
        from megatron_detox.peft import load_peft_checkpoint

        load_peft_checkpoint(module, cfg, peft)
        module.to(dtype=dtype, device=device)
        source = f"{source} + {peft}"
    spec = tokenizer or tokenizer_spec_for(model if checkpoint is None else None, cfg)
    from megatron_detox.tokenizers import load_tokenizer

    loaded = load_tokenizer(spec)
    if loaded.vocab_size > cfg.padded_vocab_size:
        raise UserError(f"tokenizer {loaded.name} has {loaded.vocab_size} tokens but the model only "
                        f"{cfg.padded_vocab_size} rows; pass the tokenizer that belongs to the model")
    return InferenceModel(module.eval(), loaded, cfg, source)


def tokenizer_spec_for(model_spec: str | None, cfg: ModelConfig) -> str:
    """Where the tokenizer of a model lives: its GGUF file or HF folder, else what the config names."""
    from megatron_detox.models.presets import PRESETS

    if model_spec is not None and model_spec not in PRESETS:
        path = Path(model_spec).expanduser()
        if path.suffix == ".gguf" or path.is_dir():
            return str(path)
    if cfg.tokenizer == "gguf":
        # The embedded SmolLM2 GGUF (checkpoints fine-tuned from it record tokenizer="gguf").
        from megatron_detox.models.embedded import ensure_embedded_gguf

        return str(ensure_embedded_gguf())
    if cfg.tokenizer and Path(cfg.tokenizer).expanduser().exists():
        return cfg.tokenizer
    raise UserError(f"model {cfg.name!r} names tokenizer {cfg.tokenizer!r}, which is not a file here; "
                    "pass --tokenizer with a tokenizer file or folder")


def _load_checkpoint(
    path: str | Path, dtype: torch.dtype, device: torch.device | str
) -> tuple[Transformer, ModelConfig, str]:
    from megatron_detox.models.loading import build_model
    from megatron_detox.train.checkpoint import load_checkpoint_weights, read_meta, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    cfg, state = load_checkpoint_weights(ckpt)
    module = build_model(cfg, dtype=torch.float32)
    method = meta.get("method", "full")
    if method != "full":
        from megatron_detox.peft import apply_peft
        from megatron_detox.peft.checkpoint import peft_config_from_metadata

        if "peft" not in meta:
            raise UserError(f"{ckpt}/meta.json: a train.method={method!r} checkpoint without its 'peft' config; "
                            f"load the base model with --model and the run's PEFT folder with --peft")
        apply_peft(module, cfg, method, peft_config_from_metadata(meta["peft"], str(ckpt / "meta.json")))
    missing, unexpected = module.load_state_dict(state, strict=False)
    tied = {"output.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        names = sorted(set(missing) - tied) or sorted(unexpected)
        raise UserError(f"{ckpt}: checkpoint does not match its recorded model (first mismatched tensor: {names[0]})")
    module.tie_weights()
    return module.to(dtype=dtype, device=device), cfg, str(ckpt)
