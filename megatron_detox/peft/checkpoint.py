"""PEFT checkpoints: only the PEFT tensors, plus a small JSON naming the base model.

A checkpoint is a folder::

    peft.safetensors   full (unsharded) PEFT tensors in plain-model names
    peft.json          {"format", "version", "method", "base_model": {"name", "architecture"},
                        "peft": {...method config...}, "weights_sha256", "num_parameters"}

It loads onto the base model on any layout (each rank keeps its shard). Files are
written to a temp name and renamed; ``peft.json`` goes last and records the hash of
the weights, so a folder caught mid-write is reported, never half-loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from megatron_detox.config import AdapterConfig, PeftConfig, PrefixConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import PRESETS
from megatron_detox.peft.adapters import transformer_layers
from megatron_detox.peft.prefix import fold_prefix_state
from megatron_detox.peft.surgery import (
    apply_peft,
    has_peft,
    is_peft_name,
    load_peft_state,
    peft_named_parameters,
    peft_state_dict,
)

FORMAT = "megatron-detox-peft"
VERSION = 1
WEIGHTS_FILE = "peft.safetensors"
META_FILE = "peft.json"
# Fields that do not change which PEFT tensors fit or what they mean.
_NOT_ARCHITECTURE = {"name", "init_method_std", "hidden_dropout", "attention_dropout", "tokenizer",
                     "bos_token_id", "eos_token_id"}


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_ARCHITECTURE}


def peft_metadata(model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig) -> dict[str, Any]:
    if method not in ("adapter", "prefix"):
        raise UserError(f"train.method={method!r}: only adapter and prefix runs have PEFT checkpoints")
    return {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "base_model": {"name": model_cfg.name, "architecture": architecture(model_cfg)},
        "peft": dataclasses.asdict(getattr(peft_cfg, method)),
    }


def peft_config_from_metadata(meta: dict[str, Any], source: str) -> PeftConfig:
    method = meta["method"]
    cls = AdapterConfig if method == "adapter" else PrefixConfig
    try:
        section = cls(**meta["peft"])
    except TypeError as error:
        raise UserError(f"{source}: field 'peft' does not fit peft.{method} ({error})") from None
    return PeftConfig(**{method: section})  # type: ignore[arg-type]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def save_peft_checkpoint(directory: str | Path, state: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``state`` (full PEFT tensors) and ``metadata`` to ``directory``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta_path = directory / WEIGHTS_FILE, directory / META_FILE
    tmp = directory / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    meta = dict(metadata, weights_sha256=_sha256(tmp), num_parameters=sum(v.numel() for v in state.values()),
                tensors={k: list(v.shape) for k, v in sorted(state.items())})
    os.replace(tmp, weights)
    tmp_meta = directory / f".{META_FILE}.tmp-{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_path)  # last: the commit point
    return directory


def read_peft_metadata(directory: str | Path) -> dict[str, Any]:
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: not found; pass a PEFT checkpoint folder (with {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{meta_path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: field 'format' is not {FORMAT!r}; this is not a megatron-detox PEFT checkpoint")
    if meta.get("version") != VERSION:
        raise UserError(f"{meta_path}: field 'version'={meta.get('version')!r} is unsupported (expected {VERSION})")
    for key in ("method", "base_model", "peft", "weights_sha256"):
        if key not in meta:
            raise UserError(f"{meta_path}: field {key!r} is missing")
    if meta["method"] not in ("adapter", "prefix"):
        raise UserError(f"{meta_path}: field 'method'={meta['method']!r} must be adapter or prefix")
    for key in ("base_model", "peft"):
        if not isinstance(meta[key], dict):
            raise UserError(f"{meta_path}: field {key!r} must be a JSON object, not {type(meta[key]).__name__}")
    if not isinstance(meta["base_model"].get("architecture", {}), dict):
        raise UserError(f"{meta_path}: field 'base_model.architecture' must be a JSON object")
    return meta


def read_peft_checkpoint(directory: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state, metadata)`` of a PEFT checkpoint folder, checked for completeness."""
    meta = read_peft_metadata(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights}: not found; the PEFT checkpoint is incomplete")
    if _sha256(weights) != meta["weights_sha256"]:
        raise UserError(f"{weights}: does not match weights_sha256 in {META_FILE} (interrupted or mixed save); "
                        "save the checkpoint again")
    try:
        state = load_file(str(weights))
    except SafetensorError as error:
        raise UserError(f"{weights}: unreadable safetensors file ({error})") from None
    return state, meta


def check_base_model(meta: dict[str, Any], model_cfg: ModelConfig, source: str) -> None:
    """UserError when the checkpoint was trained on another base model."""
    base = meta["base_model"]
    saved_name = base.get("name", "custom")
    saved_arch = base.get("architecture", {})
    current = architecture(model_cfg)
    for field, value in current.items():
        if field in saved_arch and saved_arch[field] != value:
            raise UserError(f"{source}: made for base model {saved_name!r} with {field}={saved_arch[field]!r}, but "
                            f"the model has {field}={value!r}; load it onto the base model it was trained on")
    if saved_name != model_cfg.name and saved_name in PRESETS and model_cfg.name in PRESETS:
        raise UserError(f"{source}: made for base model {saved_name!r}, not {model_cfg.name!r}; "
                        f"load it with model.preset={saved_name}")


def _check_unexpected(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    # Tensors for layers this process holds must all have a home, or the configs differ.
    held_layers = set(transformer_layers(model).keys())
    own = {name for name, _ in peft_named_parameters(model)}
    for name in sorted(state):
        parts = name.split(".")
        # Another pipeline stage's layers are fine; anything else must be one of ours.
        elsewhere = len(parts) > 1 and parts[0] == "layers" and parts[1] not in held_layers and is_peft_name(name)
        if not elsewhere and name not in own:
            raise UserError(f"{source}: unexpected tensor {name!r}; the model's PEFT configuration differs from "
                            "the checkpoint's (see its peft.json)")


def load_peft_checkpoint(
    model: nn.Module, model_cfg: ModelConfig, directory: str | Path, seed: int = 0
) -> dict[str, Any]:
    """Load a PEFT checkpoint onto ``model`` (plain, or one rank of a parallel layout).

    A model without PEFT modules gets them from the checkpoint's config first (plain
    models only: sharded models must be built with ``peft_transform``). Returns the metadata.
    """
    state, meta = read_peft_checkpoint(directory)
    source = str(Path(directory) / WEIGHTS_FILE)
    check_base_model(meta, model_cfg, str(Path(directory) / META_FILE))
    if not has_peft(model):
        apply_peft(model, model_cfg, meta["method"], peft_config_from_metadata(meta, source), seed=seed)
    _check_unexpected(model, state, source)
    load_peft_state(model, state, source)
    return meta


def gather_peft_state(model: nn.Module | list[nn.Module], group: Any = None) -> dict[str, Tensor]:
    """All PEFT tensors of the whole model, on every rank of ``group`` (collective).

    ``model`` is a module or this rank's pipeline chunks (``ParallelModel.parts``).
    Tensor-/FSDP-sharded tensors are gathered over their meshes; pass the pipeline
    group as ``group`` so every stage's layers are collected (None: the whole world).
    """
    import torch.distributed as dist

    state: dict[str, Tensor] = {}
    for part in model if isinstance(model, list) else [model]:
        state.update(peft_state_dict(part))
    if not dist.is_available() or not dist.is_initialized():
        return state
    pieces: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(pieces, state, group=group)
    merged: dict[str, Tensor] = {}
    for piece in pieces:
        merged.update(piece)
    return merged


def save_peft_from_model(
    model: nn.Module | list[nn.Module], model_cfg: ModelConfig, method: str, peft_cfg: PeftConfig, directory: str | Path,
    group: Any = None,
) -> Path:
    """Collective save from any layout: every rank calls, global rank 0 writes."""
    import torch.distributed as dist

    state = gather_peft_state(model, group)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_peft_checkpoint(directory, state, peft_metadata(model_cfg, method, peft_cfg))
    if dist.is_initialized():
        dist.barrier()
    return Path(directory)


def merge_peft_checkpoint(source: str | Path, destination: str | Path) -> dict[str, Any]:
    """Fold a reparameterized prefix into static keys/values (what inference needs)."""
    state, meta = read_peft_checkpoint(source)
    if meta["method"] == "adapter":
        raise UserError(f"{source}: adapters cannot be merged into the base weights (the bottleneck is nonlinear); "
                        "load the checkpoint with the base model instead")
    if not meta["peft"].get("reparameterize", False):
        raise UserError(f"{source}: the prefix is already static (peft.prefix.reparameterize=false); nothing to merge")
    arch = meta["base_model"]["architecture"]
    kv_heads = arch.get("num_query_groups") or arch["num_attention_heads"]
    head_dim = arch["hidden_size"] // arch["num_attention_heads"]
    folded = fold_prefix_state(state, kv_heads, head_dim)
    merged = {k: v for k, v in meta.items() if k not in ("weights_sha256", "num_parameters", "tensors")}
    merged["peft"] = dict(meta["peft"], reparameterize=False)
    merged["merged_from"] = str(source)
    save_peft_checkpoint(destination, folded, merged)
    return read_peft_metadata(destination)
