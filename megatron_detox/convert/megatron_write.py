"""Write a Megatron-LM "torch" checkpoint folder that ``--load`` accepts at the given TP x PP.

Written as a ``release`` checkpoint (``latest_checkpointed_iteration.txt`` = ``release``),
so Megatron-LM loads the weights and starts a fresh optimizer and RNG; Megatron-Core
key names (``--transformer-impl local``; with ``te=True`` the norms are folded into
``linear_qkv`` / ``linear_fc1`` as Transformer Engine layers hold them), checkpoint
version 3.0. The vocabulary is padded to a multiple of ``make_vocab_size_divisible_by
x TP``. A stage's files are written once all its groups arrived, so peak memory is one
pipeline stage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from megatron_detox.convert.formats import fresh_dir
from megatron_detox.convert.groups import layer_index
from megatron_detox.convert.megatron_args import args_from_config
from megatron_detox.convert.megatron_keys import mcore_key, megatron_padded_vocab, repad_rows, split_layer
from megatron_detox.convert.megatron_read import SHARD_FILE, TRACKER
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig

CHECKPOINT_VERSION = 3.0


class MegatronSink:
    def __init__(self, out: str | Path, cfg: ModelConfig, tp: int, pp: int, dtype: str = "fp32",
                 te: bool = False) -> None:
        if cfg.num_attention_heads % tp or cfg.kv_heads % tp or cfg.ffn_size % tp:
            raise UserError(f"--tp {tp}: must divide the attention heads ({cfg.num_attention_heads}), query groups "
                            f"({cfg.kv_heads}) and the MLP size ({cfg.ffn_size})")
        if cfg.num_layers % pp:
            raise UserError(f"--pp {pp}: must divide the number of layers ({cfg.num_layers})")
        self.out = Path(out)
        self.cfg, self.tp, self.pp, self.te = cfg, tp, pp, te
        self.padded_vocab = megatron_padded_vocab(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp)
        self.args = args_from_config(cfg, tp, pp, self.padded_vocab, dtype)
        self.per_stage = cfg.num_layers // pp
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.stage = 0
        self.pending: list[dict[str, Tensor]] = [{} for _ in range(tp)]

    def _dir(self, tp: int, pp: int) -> str:
        return f"mp_rank_{tp:02d}" if self.pp == 1 else f"mp_rank_{tp:02d}_{pp:03d}"

    def _stage_of(self, names: list[str]) -> int:
        index = layer_index(names)
        if index is not None:
            return index // self.per_stage
        return 0 if names[0].startswith(("tok_embeddings.", "pos_embeddings.")) else self.pp - 1

    def write(self, tensors: dict[str, Tensor]) -> None:
        names = list(tensors)
        stage = self._stage_of(names)
        while stage > self.stage:
            self._flush()
        index = layer_index(names)
        if index is not None:
            local = index - stage * self.per_stage
            for rank, parts in enumerate(split_layer(tensors, self.cfg, index, self.tp)):
                for (part, leaf), tensor in parts.items():
                    self.pending[rank][mcore_key(("layer", local, part, leaf), self.te)] = tensor
            return
        for name, tensor in tensors.items():
            leaf = name.rpartition(".")[2]
            if name in ("tok_embeddings.weight", "output.weight"):
                self._vocab_parallel(("word" if name.startswith("tok") else "output", leaf), tensor)
                if name == "tok_embeddings.weight" and self.cfg.tie_word_embeddings and self.pp > 1:
                    self.tied_copy = tensor  # the last stage holds its own copy (``output_layer``)
            else:
                replicated = ("pos", leaf) if name.startswith("pos_embeddings.") else ("final_norm", leaf)
                for rank in range(self.tp):
                    self.pending[rank][mcore_key(replicated)] = tensor.clone()
        if stage == self.pp - 1 and names[0].startswith("norm.") and self.cfg.tie_word_embeddings and self.pp > 1:
            self._vocab_parallel(("head_copy", "weight"), self.tied_copy)

    def _vocab_parallel(self, part: tuple[str, str], tensor: Tensor) -> None:
        rows = repad_rows(tensor, self.cfg.vocab_size, self.padded_vocab)
        for rank, shard in enumerate(rows.chunk(self.tp)):
            self.pending[rank][mcore_key(part)] = shard.clone()

    def _flush(self) -> None:
        if self.stage == 0:
            fresh_dir(self.tmp)
        for rank, model in enumerate(self.pending):
            folder = self.tmp / "release" / self._dir(rank, self.stage)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"args": self.args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": 0, "model": model},
                       folder / SHARD_FILE)
        self.pending = [{} for _ in range(self.tp)]
        self.stage += 1

    def finish(self) -> Path:
        while self.stage < self.pp:
            self._flush()
        (self.tmp / TRACKER).write_text("release\n", encoding="utf-8")
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def describe(self, name: str) -> str:
        index = layer_index([name])
        where = f"{self.tp} x mp_rank_XX" + (f"_{self._stage_of([name]):03d}" if self.pp > 1 else "")
        if index is not None:
            module = name.split(".", 2)[2].rsplit(".", 1)[0]
            part = {"attention_norm": "norm1", "mlp_norm": "norm2", "attention.o_proj": "proj",
                    "mlp.down_proj": "fc2", "mlp.up_proj": "fc1", "mlp.gate_proj": "fc1"}.get(module, "qkv")
            key = mcore_key(("layer", index % self.per_stage, part, name.rpartition(".")[2]), self.te)
        else:
            part = {"tok_embeddings": "word", "pos_embeddings": "pos", "norm": "final_norm",
                    "output": "output"}[name.split(".")[0]]
            key = mcore_key((part, name.rpartition(".")[2]))
        return f"{key} @ {where}"
