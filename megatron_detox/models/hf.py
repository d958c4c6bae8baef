"""Load a Hugging Face model folder (``gpt2`` or ``llama``) into our config and names.

A folder holds ``config.json`` and either ``model.safetensors`` or a sharded
``model.safetensors.index.json``. Tensors keep their stored dtype (``load_state_dict``
casts); the key maps live in :mod:`megatron_detox.models.hf_keys`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.jsonl import read_json
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.hf_keys import (
    IGNORED_HF_SUFFIXES,
    config_from_hf,
    from_hf_state_dict,
    hf_model_type,
    to_hf_state_dict,
)
from megatron_detox.models.state_dict import check_state_dict

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class HFReader:
    """An HF folder opened for reading tensors one at a time (config parsed, files indexed)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = folder = Path(folder)
        self.cfg = config_from_hf(read_json(folder / "config.json"), str(folder / "config.json"), name=folder.name)
        if (folder / "tokenizer.json").is_file():
            self.cfg.tokenizer = str(folder / "tokenizer.json")
        self.files = _tensor_files(folder)
        for path in set(self.files.values()):
            _open_safetensors(path)  # a damaged header fails here, before any tensor is read
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """HF tensor ``name``, checked against ``shape``; a UserError naming the file otherwise."""
        # Some GPT-2 checkpoints (the original `gpt2` on the Hub) store names without "transformer."
        key = name if name in self.files else name.removeprefix("transformer.")
        if key not in self.files:
            raise UserError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        path = self.files[key]
        try:
            # The file is memory-mapped per tensor and unmapped once the tensor is dropped:
            # the touched pages of a map kept open for the whole load stay resident, and a
            # sharded load would end up with the whole file in its RSS.
            with _open_safetensors(path) as handle:
                tensor: Tensor = handle.get_tensor(key)
        except UserError:
            raise
        except Exception as exc:  # safetensors raises its own error types on damaged data
            raise UserError(f"{path}: cannot read tensor {key!r} ({exc}); the file is damaged") from None
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"{path}: tensor {key!r} has shape {list(tensor.shape)}, expected {list(shape)}")
        self.used.add(key)
        return tensor

    def read(self, names: list[str]) -> dict[str, Tensor]:
        """Our tensors ``names`` (vocab rows padded)."""
        return from_hf_state_dict(self.cfg, self.get, set(names))

    def check_all_used(self) -> None:
        """A UserError naming a tensor of the folder that no name of ours maps to."""
        leftover = sorted(k for k in set(self.files) - self.used if not k.endswith(IGNORED_HF_SUFFIXES)
                          and not (self.cfg.tie_word_embeddings and k == "lm_head.weight"))
        if leftover:
            raise UserError(f"{self.files[leftover[0]]}: unexpected tensor {leftover[0]!r} for model_type "
                            f"{hf_model_type(self.cfg)!r}")


def load_hf(folder: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Return ``(config, state_dict)`` in our parameter names, vocab rows zero-padded."""
    reader = HFReader(folder)
    state = from_hf_state_dict(reader.cfg, reader.get)
    reader.check_all_used()
    check_state_dict(reader.cfg, state, str(reader.path))
    return reader.cfg, state


def _tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    if (folder / INDEX_FILE).is_file():
        index = read_json(folder / INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise UserError(f"{folder / INDEX_FILE}: field 'weight_map' is missing")
        files = {name: folder / shard for name, shard in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise UserError(f"{path}: shard listed in {INDEX_FILE} is missing")
        return files
    path = folder / SINGLE_FILE
    if not path.is_file():
        raise UserError(f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found "
                        "(PyTorch .bin checkpoints are not supported; convert them to safetensors)")
    return {name: path for name in _open_safetensors(path).keys()}


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError on a bad header or short file
        raise UserError(f"{path}: not a readable safetensors file ({exc}); "
                        "it may be truncated, download it again") from None


__all__ = ["HFReader", "is_hf_folder", "load_hf", "to_hf_state_dict"]
