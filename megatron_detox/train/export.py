"""``export hf``: a checkpoint of ours → ``config.json`` + ``model.safetensors`` for transformers.

The checkpoint's own ``meta.json`` gives the architecture; DCP assembles full tensors
from whatever layout saved them (single process, no process group). Names and layouts
map through ``models.hf_keys`` (Llama family → ``LlamaForCausalLM``, Megatron GPT →
``GPT2LMHeadModel``); the vocabulary padding is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.hf_keys import hf_model_type, to_hf_state_dict
from megatron_detox.models.state_dict import expected_shapes
from megatron_detox.train.checkpoint import (
    load_plain_model_state,
    model_config_from_meta,
    read_meta,
    resolve_checkpoint,
)


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, ModelConfig]:
    """Write the HF folder ``out_dir`` for ``checkpoint`` (a step, checkpoints or run folder)."""
    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    if meta.get("method", "full") != "full":
        raise UserError(f"{ckpt}: a train.method={meta['method']!r} checkpoint holds PEFT modules HF models "
                        "do not have; merge them first")
    cfg = model_config_from_meta(meta, ckpt)
    hf_model_type(cfg)  # a UserError before loading anything if HF cannot express the model
    out = Path(out_dir).expanduser().resolve()  # '.' has no name to put '.tmp' on
    _check_replaceable(out)
    state = load_plain_model_state(ckpt, cfg, sorted(expected_shapes(cfg)))
    if cfg.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    hf_config, hf_state = to_hf_state_dict(cfg, state)
    hf_config["torch_dtype"] = "float32"
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with on_disk_full(tmp / "model.safetensors", cleanup=[tmp]):  # a full disk leaves no half export
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out, cfg


_EXPORT_FILES = {"config.json", "model.safetensors"}


def _check_replaceable(out: Path) -> None:
    """``out`` is replaced whole, so it must be new, empty or an earlier export (never a run folder or ~)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a new folder for the export")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in _EXPORT_FILES)
        if others:
            raise UserError(f"{out}: holds {others[0]!r} and is not an earlier export, so it will not be "
                            "replaced; give a new or empty folder")
