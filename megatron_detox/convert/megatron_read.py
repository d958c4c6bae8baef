"""Read a Megatron-LM "torch" checkpoint folder, one tensor group at a time.

Layout (``megatron/training/checkpointing.py``)::

    ROOT/latest_checkpointed_iteration.txt      "1000" or "release"
    ROOT/iter_0001000/mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt   (or ROOT/release/...)

Each shard is a dict with ``args``, ``checkpoint_version``, ``iteration`` and ``model``
(plus optimizer and RNG state, which a conversion does not need). The folder is
checked whole before any tensor is read: every TP x PP shard present, the same
parallel sizes and checkpoint version in every file, only known keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from megatron_detox.convert.groups import layer_index
from megatron_detox.convert.megatron_args import args_vocab_size, config_from_args
from megatron_detox.convert.megatron_keys import (
    KNOWN_VERSIONS,
    Part,
    flatten,
    is_ignored,
    layer_parts,
    merge_layer,
    parse_key,
    repad_rows,
)
from megatron_detox.convert.megatron_load import load_megatron_file
from megatron_detox.errors import UserError

TRACKER = "latest_checkpointed_iteration.txt"
SHARD_FILE = "model_optim_rng.pt"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


def is_megatron_folder(path: Path) -> bool:
    return (path / TRACKER).is_file() or any(_RANK_DIR.match(p.name) for p in path.glob("mp_rank_*"))


def iteration_dir(root: Path) -> Path:
    """The ``iter_XXXXXXX`` or ``release`` folder ``root`` points to (or ``root`` itself)."""
    tracker = root / TRACKER
    if not tracker.is_file():
        if any(_RANK_DIR.match(p.name) for p in root.glob("mp_rank_*")):
            return root
        raise UserError(f"{root}: not a Megatron-LM checkpoint (no {TRACKER} and no mp_rank_* folders)")
    text = tracker.read_text(encoding="utf-8", errors="replace").strip()
    if text == "release":
        folder = root / "release"
    elif text.isdigit():
        folder = root / f"iter_{int(text):07d}"
    else:
        raise UserError(f"{tracker}: holds {text[:40]!r}, not an iteration number or 'release'")
    if not folder.is_dir():
        raise UserError(f"{tracker}: names {folder.name}, which does not exist")
    return folder


@dataclass
class _Stage:
    """What one pipeline stage's files hold: layer count and the part of each key."""

    files: list[Path]  # by TP rank
    keys: dict[Part, str] = field(default_factory=dict)  # part -> Megatron key (same in every TP file)
    num_layers: int = 0
    first_layer: int = 0


class MegatronSource:
    """A Megatron-LM checkpoint as a :class:`~megatron_detox.convert.groups.Source`."""

    def __init__(self, path: str | Path, vocab_size: int | None = None) -> None:
        self.path = Path(path)
        folder = iteration_dir(self.path)
        ranks = self._rank_dirs(folder)
        first = folder / ranks[0][2] / SHARD_FILE
        head = load_megatron_file(first)
        args = head.get("args")
        self.version = self._version(head, first)
        self.iteration = head.get("iteration")
        self.tp = int(getattr(args, "tensor_model_parallel_size", 0) or 0)
        self.pp = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
        known = args_vocab_size(args) if args is not None else None
        if vocab_size is not None and known is not None and known > vocab_size:
            raise UserError(f"{first}: the model's vocabulary has {known} tokens, more than the target "
                            f"tokenizer's {vocab_size}; use the tokenizer the model was trained with")
        self.cfg = config_from_args(args, str(first), vocab_size)
        self.padded_vocab = int(getattr(args, "padded_vocab_size", 0))
        self._check_grid(folder, ranks, first)
        self.stages = [_Stage([folder / self._dir_name(t, p) / SHARD_FILE for t in range(self.tp)])
                       for p in range(self.pp)]
        self._mapped: set[int] = set()  # storages of the memory-mapped shards a read touched
        self._index()
        if self.cfg.vocab_size > self.padded_vocab:
            raise UserError(f"{first}: the target tokenizer has {self.cfg.vocab_size} tokens but the checkpoint "
                            f"holds only {self.padded_vocab} embedding rows")
        del head

    # ------------------------------------------------------------ discovery

    def _dir_name(self, tp: int, pp: int) -> str:
        return f"mp_rank_{tp:02d}" if self.pp == 1 else f"mp_rank_{tp:02d}_{pp:03d}"

    @staticmethod
    def _rank_dirs(folder: Path) -> list[tuple[int, int, str]]:
        found = []
        for child in sorted(folder.iterdir()):
            match = _RANK_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), int(match.group(2) or 0), child.name))
        if not found:
            raise UserError(f"{folder}: holds no mp_rank_* folders")
        return found

    @staticmethod
    def _version(obj: dict[str, Any], file: Path) -> float:
        version = obj.get("checkpoint_version", 0)
        if not isinstance(version, (int, float)) or float(version) not in KNOWN_VERSIONS:
            known = ", ".join(str(v) for v in KNOWN_VERSIONS)
            raise UserError(f"{file}: checkpoint_version {version!r} is unknown (known: {known})")
        return float(version)

    def _check_grid(self, folder: Path, ranks: list[tuple[int, int, str]], first: Path) -> None:
        tps = {t for t, _, _ in ranks}
        pps = {p for _, p, _ in ranks}
        if self.tp < 1:
            raise UserError(f"{first}: args.tensor_model_parallel_size is missing")
        if len(tps) > self.tp or max(tps) >= self.tp:
            raise UserError(f"{first}: args.tensor_model_parallel_size={self.tp} but {folder} holds "
                            f"{len(tps)} tensor-parallel ranks (mp_rank_00..mp_rank_{max(tps):02d})")
        if max(pps) >= self.pp:
            raise UserError(f"{first}: args.pipeline_model_parallel_size={self.pp} but {folder} holds "
                            f"pipeline stage {max(pps)}")
        for p in range(self.pp):
            for t in range(self.tp):
                file = folder / self._dir_name(t, p) / SHARD_FILE
                if not file.is_file():
                    raise UserError(f"{file}: shard file is missing (args give TP={self.tp} x PP={self.pp})")

    def _index(self) -> None:
        """Check every file's args and keys; record where each part lives."""
        first_layer = 0
        for p, stage in enumerate(self.stages):
            for t, file in enumerate(stage.files):
                obj = load_megatron_file(file)
                args = obj.get("args")
                sizes = (getattr(args, "tensor_model_parallel_size", None),
                         getattr(args, "pipeline_model_parallel_size", 1) or 1)
                if sizes != (self.tp, self.pp):
                    raise UserError(f"{file}: args give TP={sizes[0]} x PP={sizes[1]}, but "
                                    f"{stage.files[0] if t else self.stages[0].files[0]} gives TP={self.tp} x PP={self.pp}")
                if self._version(obj, file) != self.version:
                    raise UserError(f"{file}: checkpoint_version {obj.get('checkpoint_version')} differs from "
                                    f"{self.version} in the other shards")
                model = obj.get("model")
                if not isinstance(model, dict):
                    raise UserError(f"{file}: no 'model' state dict")
                keys: dict[Part, str] = {}
                for key, value in flatten(model).items():
                    if is_ignored(key):
                        continue
                    parsed = parse_key(key)
                    if parsed is None or not isinstance(value, Tensor):
                        raise UserError(f"{file}: unexpected entry {key!r} for a GPT model")
                    keys[self._normalize(parsed[1], p)] = key
                if t == 0:
                    stage.keys = keys
                elif set(keys) != set(stage.keys):
                    odd = sorted(map(str, set(keys) ^ set(stage.keys)))[0]
                    raise UserError(f"{file}: holds other tensors than {stage.files[0]} ({odd})")
            layers = {part[1] for part in stage.keys if part[0] == "layer"}
            if layers != set(range(len(layers))):
                raise UserError(f"{stage.files[0]}: layer numbers {sorted(layers)} are not 0..{len(layers) - 1}")
            stage.num_layers, stage.first_layer = len(layers), first_layer
            first_layer += len(layers)
        if first_layer != self.cfg.num_layers:
            raise UserError(f"{self.stages[0].files[0]}: args.num_layers={self.cfg.num_layers} but the shards hold "
                            f"{first_layer} layers")

    def _normalize(self, part: Part, stage: int) -> Part:
        # Megatron-Core names the tied copy on the last stage output_layer, like an untied output.
        if part[0] == "output" and self.cfg.tie_word_embeddings:
            return ("head_copy", part[1])
        return part

    # ------------------------------------------------------------ reading

    def _stage_of(self, layer: int) -> tuple[_Stage, int]:
        for stage in self.stages:
            if stage.first_layer <= layer < stage.first_layer + stage.num_layers:
                return stage, layer - stage.first_layer
        raise IndexError(layer)

    def _fetch(self, stage: _Stage, parts: list[Part]) -> dict[Part, list[Tensor]]:
        """``parts`` from every TP rank of ``stage`` (memory-mapped views)."""
        missing = [part for part in parts if part not in stage.keys]
        if missing:
            raise UserError(f"{stage.files[0]}: tensor for {missing[0]} is missing")
        out: dict[Part, list[Tensor]] = {part: [] for part in parts}
        for file in stage.files:
            model = flatten(load_megatron_file(file)["model"])
            for part in parts:
                tensor: Tensor = model[stage.keys[part]]  # type: ignore[assignment]
                self._mapped.add(tensor.untyped_storage().data_ptr())
                out[part].append(tensor)
        return out

    def read(self, names: list[str]) -> dict[str, Tensor]:
        cfg = self.cfg
        self._mapped.clear()
        index = layer_index(names)
        if index is not None:
            stage, local = self._stage_of(index)
            wanted = [("layer", local, part, leaf) for part, leaf in layer_parts(cfg)]
            fetched = self._fetch(stage, wanted)
            shards = {(part[2], part[3]): tensors for part, tensors in fetched.items()}
            out = merge_layer(shards, cfg, index, self.version)
        else:
            out = {}
            for name in names:
                out[name] = self._global(name)
        # Replicated tensors are views into the mapped file; own them so the file can close.
        out = {name: t.clone() if t.untyped_storage().data_ptr() in self._mapped else t for name, t in out.items()}
        self._mapped.clear()
        return out

    def _global(self, name: str) -> Tensor:
        leaf = name.rpartition(".")[2]
        if name == "tok_embeddings.weight":
            return self._vocab(self.stages[0], ("word", leaf))
        if name == "output.weight":
            return self._vocab(self.stages[-1], ("output", leaf))
        if name.startswith("pos_embeddings."):
            return self._fetch(self.stages[0], [("pos", leaf)])[("pos", leaf)][0]
        return self._fetch(self.stages[-1], [("final_norm", leaf)])[("final_norm", leaf)][0]

    def _vocab(self, stage: _Stage, part: Part) -> Tensor:
        full = torch.cat(self._fetch(stage, [part])[part])  # vocab-parallel: rows split over TP
        if full.shape[0] != self.padded_vocab:
            raise UserError(f"{stage.files[0]}: {stage.keys[part]} has {full.shape[0]} rows over {self.tp} ranks, "
                            f"args.padded_vocab_size is {self.padded_vocab}")
        return repad_rows(full, self.cfg.vocab_size, self.cfg.padded_vocab_size)

    def describe(self, name: str) -> str:
        index = layer_index([name])
        if index is not None:
            stage, local = self._stage_of(index)
            part = _OURS_TO_PART[name.split(".", 2)[2].rsplit(".", 1)[0]]
            key = stage.keys.get(("layer", local, part, name.rpartition(".")[2]), "?")
        else:
            stage = self.stages[-1] if name.startswith(("norm.", "output.")) else self.stages[0]
            part = {"tok_embeddings": "word", "pos_embeddings": "pos", "norm": "final_norm",
                    "output": "output"}[name.split(".")[0]]
            key = stage.keys.get((part, name.rpartition(".")[2]), "?")
        return f"{key} @ {stage.files[0].parent.name}{' (x' + str(self.tp) + ' TP)' if self.tp > 1 else ''}"


_OURS_TO_PART = {"attention_norm": "norm1", "mlp_norm": "norm2", "attention.q_proj": "qkv",
                 "attention.k_proj": "qkv", "attention.v_proj": "qkv", "attention.o_proj": "proj",
                 "mlp.gate_proj": "fc1", "mlp.up_proj": "fc1", "mlp.down_proj": "fc2"}
