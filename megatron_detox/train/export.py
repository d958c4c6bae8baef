"""``export hf``: a checkpoint of ours → ``config.json`` + ``model.safetensors`` for transformers.

The checkpoint's own ``meta.json`` gives the architecture; DCP assembles full tensors
from whatever layout saved them (single process, no process group), one layer at a time. Names and layouts
map through ``models.hf_keys`` (Llama family → ``LlamaForCausalLM``, Megatron GPT →
``GPT2LMHeadModel``); the vocabulary padding is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from megatron_detox.convert.formats import HFSink
from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.hf import INDEX_FILE, SINGLE_FILE
from megatron_detox.models.hf_keys import hf_model_type
from megatron_detox.sources import DcpSource, tensor_groups
from megatron_detox.train.checkpoint import model_config_from_meta, read_meta, resolve_checkpoint

DEFAULT_SHARD_BYTES = 5 * 2**30
"""As ``convert --to hf`` (and transformers' ``save_pretrained`` with ``max_shard_size="5GB"``)."""


def export_hf(checkpoint: str | Path, out_dir: str | Path,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> tuple[Path, ModelConfig]:
    """Write the HF folder ``out_dir`` for ``checkpoint`` (a step, checkpoints or run folder).

    Streamed one tensor group (a layer) at a time from the checkpoint into safetensors
    files of at most ``max_shard_bytes`` (one ``model.safetensors`` when it fits, else
    shards and an index, as transformers writes them): the full model is never in memory.
    """
    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    if meta.get("method", "full") != "full":
        raise UserError(f"{ckpt}: a train.method={meta['method']!r} checkpoint holds PEFT modules HF models "
                        "do not have; merge them first")
    cfg = model_config_from_meta(meta, ckpt)
    hf_model_type(cfg)  # a UserError before loading anything if HF cannot express the model
    out = Path(out_dir).expanduser().resolve()  # '.' has no name to put '.tmp' on
    _check_replaceable(out)
    source = DcpSource(ckpt)
    sink = HFSink(out, cfg, torch.float32, max_shard_bytes)
    with on_disk_full(sink.tmp / SINGLE_FILE, cleanup=[sink.tmp]):  # a full disk leaves no half export
        for _, names in tensor_groups(cfg):
            sink.write({name: tensor.to(torch.float32) for name, tensor in source.read(names).items()})
        sink.finish()
    return out, cfg


_EXPORT_FILES = {"config.json", SINGLE_FILE, INDEX_FILE}
_EXPORT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _check_replaceable(out: Path) -> None:
    """``out`` is replaced whole, so it must be new, empty or an earlier export (never a run folder or ~)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a new folder for the export")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir()
                        if p.name not in _EXPORT_FILES and not _EXPORT_SHARD.fullmatch(p.name))
        if others:
            raise UserError(f"{out}: holds {others[0]!r} and is not an earlier export, so it will not be "
                            "replaced; give a new or empty folder")
