"""What a training run needs before its first step: tokenizer, datasets, pretrained weights.

Kept apart from the loop (``trainer.py``) so each piece is testable on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from torch import Tensor

from megatron_detox.config import RunConfig
from megatron_detox.data import Blend, build_gpt_datasets, parse_blend, preprocess_text_files
from megatron_detox.data.megatron_core import GPTDataset
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.train.checkpoint import (
    check_compatible,
    load_plain_model_state,
    model_shape,
    read_meta,
    resolve_checkpoint,
)


@dataclass
class IdsOnlyTokenizer:
    """Vocabulary size and EOD id for already tokenized data (no text is encoded)."""

    name: str
    vocab_size: int
    eod: int
    bos: int | None = None

    def encode(self, text: str) -> list[int]:
        raise UserError("data.tokenizer: tokenizing text needs a tokenizer; set data.tokenizer to its files")

    def decode(self, ids: list[int]) -> str:
        raise UserError("data.tokenizer: decoding needs a tokenizer; set data.tokenizer to its files")


def resolve_tokenizer(cfg: RunConfig, model_cfg: ModelConfig):  # noqa: ANN201 - a Tokenizer
    """``data.tokenizer``, else the model's own (the embedded GGUF's for SmolLM2)."""
    from megatron_detox.tokenizers import load_tokenizer  # noqa: PLC0415

    spec = cfg.data.tokenizer
    if spec is None:
        if model_cfg.tokenizer == "gguf":
            from megatron_detox.models.embedded import ensure_embedded_gguf  # noqa: PLC0415

            spec = str(ensure_embedded_gguf())
        elif not cfg.data.text_files and model_cfg.eos_token_id is not None:
            # Pretokenized data only needs the vocabulary size and the EOD id.
            return IdsOnlyTokenizer(f"ids:{model_cfg.name}", model_cfg.vocab_size, model_cfg.eos_token_id)
        else:
            raise UserError(f"data.tokenizer: model {model_cfg.name!r} uses tokenizer {model_cfg.tokenizer!r}, "
                            "which has no files here; set data.tokenizer (e.g. VOCAB.json,MERGES.txt)")
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"data.tokenizer={spec}: vocabulary of {tokenizer.vocab_size} tokens does not fit "
                        f"model.vocab_size={model_cfg.vocab_size}; set model.vocab_size >= {tokenizer.vocab_size}")
    return tokenizer


def data_blend(cfg: RunConfig, tokenizer, cache_dir: Path, *, is_main: bool) -> Blend:  # noqa: ANN001
    """``data.paths`` plus ``data.text_files`` (tokenized on the main rank first, cached)."""
    prefixes: list[str] = []
    if cfg.data.text_files:
        if is_main:
            prefixes = preprocess_text_files(cfg.data.text_files, tokenizer, cfg.data.json_key, cache_dir,
                                             workers=cfg.data.num_workers)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if not is_main:
            prefixes = preprocess_text_files(cfg.data.text_files, tokenizer, cfg.data.json_key, cache_dir,
                                             progress=False)
    if not cfg.data.paths:
        return parse_blend(prefixes, "data.text_files")
    blend = parse_blend(cfg.data.paths)
    if prefixes and blend.weights is not None:
        raise UserError("data.text_files: cannot be mixed with a weighted data.paths blend; preprocess the "
                        "files with `megatron-detox data preprocess` and give them weights in data.paths")
    return Blend(blend.prefixes + prefixes, blend.weights)


def build_datasets(cfg: RunConfig, tokenizer, cache_dir: Path, *, is_main: bool,  # noqa: ANN001
                   train_samples: int | None = None) -> tuple[GPTDataset, GPTDataset | None]:
    """(train, valid) datasets; valid only when evaluation is on.

    ``train_samples``: train samples the run reads in all (default ``steps x global_batch_size``).
    """
    t = cfg.train
    blend = data_blend(cfg, tokenizer, cache_dir, is_main=is_main)
    evaluating = t.eval_interval > 0
    train_ds, valid_ds, _ = build_gpt_datasets(
        blend, tokenizer, seq_length=cfg.data.seq_length, seed=t.seed, split=cfg.data.split,
        num_samples=(train_samples if train_samples is not None else t.steps * t.global_batch_size, t.eval_steps * t.global_batch_size if evaluating else 0, 0),
        cache_dir=cache_dir / "indices",
    )
    if train_ds is None:
        raise UserError(f"data.split={cfg.data.split!r}: the train split is empty")
    if evaluating and valid_ds is None:
        raise UserError(f"data.split={cfg.data.split!r}: train.eval_interval={t.eval_interval} needs a "
                        "validation split with documents (e.g. data.split=90,10,0)")
    return train_ds, valid_ds


def load_pretrained(spec: str, model_cfg: ModelConfig, method: str) -> Mapping[str, Tensor]:
    """Plain weights for fine-tuning, read one layer at a time as the model asks for them.

    ``spec``: a run/checkpoint folder of ours, a preset with weights, a GGUF file or an HF
    folder. The full state dict is never assembled (``parallel.sharded_load.SourceTensors``).
    """
    from megatron_detox.parallel.sharded_load import SourceTensors, open_weights  # noqa: PLC0415

    path = Path(spec).expanduser()
    if path.is_dir() and ((path / "meta.json").is_file() or (path / "checkpoints").is_dir()
                          or (path / "latest").is_file()):
        ckpt = resolve_checkpoint(path)
        meta = read_meta(ckpt)
        check_compatible(meta, model_cfg, meta.get("method", "full"), ckpt)
        return SourceTensors(lambda names: load_plain_model_state(ckpt, model_cfg, names), model_cfg)
    weights = open_weights(spec)
    ours, theirs = model_shape(model_cfg), model_shape(weights.cfg)
    for name, value in ours.items():
        if theirs[name] != value:
            raise UserError(f"model.pretrained={spec}: has {name}={theirs[name]!r} but the config gives "
                            f"{value!r}; use model.preset/fields matching the weights")
    assert weights.tensors is not None
    return SourceTensors(weights.tensors.read, weights.cfg)
