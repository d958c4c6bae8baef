"""Sinks for our own DCP checkpoints and Hugging Face folders (sources: :mod:`megatron_detox.sources`).

Each reuses the loader the rest of the package uses (``train.checkpoint`` /
``train.safe_dcp`` for DCP, ``models.hf`` / ``models.hf_keys`` for HF,
``models.gguf_loader`` for GGUF) and reads or writes one tensor group at a time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from megatron_detox.atomic import write_text_atomic
from megatron_detox.convert.groups import tensor_groups
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.hf import INDEX_FILE, SINGLE_FILE
from megatron_detox.models.hf_keys import config_to_hf, to_hf_state_dict
from megatron_detox.models.state_dict import expected_shapes, pad_vocab
from megatron_detox.sources import DcpSource, GGUFSource, HFSource
from megatron_detox.train.checkpoint import (
    model_shape,
    save_checkpoint,
)

__all__ = ["DcpSink", "DcpSource", "GGUFSource", "HFSink", "HFSource", "fresh_dir"]

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def fresh_dir(path: Path) -> None:
    """An empty folder at ``path`` (a leftover of a killed conversion is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


# ---------------------------------------------------------------- ours (DCP)


class DcpSink:
    """A run folder of ours: ``checkpoints/step_000000`` (DCP, full tensors) + ``meta.json``.

    Full (unsharded) tensors are layout-free: DCP reshards them for whatever TP x PP x DP
    layout loads them, so ``--tp/--pp`` only go into ``meta.json``'s ``layout``.

    Streaming: ``dcp.save`` runs in a writer thread on a state dict of meta tensors; its
    planner asks for each tensor when it writes it (one file per tensor, in group order),
    and ``write`` hands over one group at a time through a one-slot queue.
    """

    def __init__(self, out: str | Path, cfg: ModelConfig, tp: int, pp: int) -> None:
        self.out, self.cfg = Path(out), cfg
        self.layout = f"tp={tp} pp={pp}"
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.groups: queue.Queue[dict[str, Tensor] | None] = queue.Queue(maxsize=1)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _start(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        shapes = expected_shapes(self.cfg)
        spec: dict[str, Tensor] = {}
        for _, names in tensor_groups(self.cfg):
            for name in names:
                spec[name] = torch.empty(shapes[name], dtype=dtype, device="meta")
                if name == "tok_embeddings.weight" and self.cfg.tie_word_embeddings:
                    # Stored under both names, as training saves it; written with the embeddings.
                    spec["output.weight"] = torch.empty(shapes[name], dtype=dtype, device="meta")
        meta = {"model": model_shape(self.cfg), "model_config": dataclasses.asdict(self.cfg), "method": "full",
                "layout": self.layout, "world_size": 1, "converted": True}
        fresh_dir(self.tmp)

        def save() -> None:
            try:
                save_checkpoint(self.tmp, 0, {"model": spec}, meta, rank=0, keep_last=0,
                                planner=_PullPlanner(self._pull), single_file_per_rank=False)
            except BaseException as error:  # re-raised by the converting thread
                self.error = error

        self.current: dict[str, Tensor] = {}
        self.thread = threading.Thread(target=save, name="dcp-writer", daemon=True)
        self.thread.start()

    def _pull(self, name: str) -> Tensor:
        while name not in self.current:
            group = self.groups.get()
            if group is None:
                raise RuntimeError(f"the converter ended before tensor {name!r} was written")
            self.current = group
        return self.current.pop(name).to(self.dtype)  # the dtype the plan announced

    def write(self, tensors: dict[str, Tensor]) -> None:
        group = pad_vocab(self.cfg, dict(tensors))
        if self.cfg.tie_word_embeddings and "tok_embeddings.weight" in group:
            group["output.weight"] = group["tok_embeddings.weight"]
        if self.thread is None:
            self._start(next(iter(group.values())).dtype)
        self._put(group)

    def _put(self, group: dict[str, Tensor] | None) -> None:
        assert self.thread is not None
        while True:
            if self.error is not None or not self.thread.is_alive():
                if group is None and self.error is None:
                    return  # the writer already has every tensor and finished
                self._raise()
            try:
                self.groups.put(group, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
        raise RuntimeError("the DCP writer thread stopped early")

    def finish(self) -> Path:
        assert self.thread is not None, "nothing was written"
        if self.thread.is_alive():
            self._put(None)
        self.thread.join()
        if self.error is not None:
            self._raise()
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def describe(self, name: str) -> str:
        return f"model.{name} @ checkpoints/step_000000"


class _PullPlanner(DefaultSavePlanner):
    """DCP's default plan, with each tensor's data asked for only when the writer reaches it."""

    def __init__(self, pull: Callable[[str], Tensor]) -> None:
        super().__init__()
        self.pull = pull

    def resolve_data(self, write_item: WriteItem) -> Tensor | io.BytesIO:
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        return self.pull(write_item.index.fqn.removeprefix("model."))


# ---------------------------------------------------------------- Hugging Face


class HFSink:
    """An HF folder: ``config.json`` and safetensors shards of at most ``max_shard_bytes`` (+ index)."""

    def __init__(self, out: str | Path, cfg: ModelConfig, dtype: torch.dtype, max_shard_bytes: int) -> None:
        self.out, self.cfg, self.dtype = Path(out), cfg, dtype
        self.max_shard_bytes = max_shard_bytes
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.shard: dict[str, Tensor] = {}
        self.shards: list[list[str]] = []
        self.total = 0

    def write(self, tensors: dict[str, Tensor]) -> None:
        _, hf = to_hf_state_dict(self.cfg, tensors, partial=True)
        for name, tensor in hf.items():
            if self.shard and sum(t.nbytes for t in self.shard.values()) + tensor.nbytes > self.max_shard_bytes:
                self._flush()
            self.shard[name] = tensor
            self.total += tensor.nbytes

    def _flush(self) -> None:
        if not self.shards:
            fresh_dir(self.tmp)
        save_file(self.shard, str(self.tmp / f"shard{len(self.shards)}.safetensors"), metadata={"format": "pt"})
        self.shards.append(list(self.shard))
        self.shard = {}

    def finish(self) -> Path:
        if self.shard:
            self._flush()
        config: dict[str, Any] = config_to_hf(self.cfg)
        config["torch_dtype"] = DTYPE_NAMES[self.dtype]
        (self.tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        count = len(self.shards)
        if count == 1:
            os.replace(self.tmp / "shard0.safetensors", self.tmp / SINGLE_FILE)
        else:
            weight_map = {}
            for i, names in enumerate(self.shards):
                file = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                os.replace(self.tmp / f"shard{i}.safetensors", self.tmp / file)
                weight_map.update(dict.fromkeys(names, file))
            write_text_atomic(self.tmp / INDEX_FILE, json.dumps(
                {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def describe(self, name: str) -> str:
        return HFSource.describe(self, name)  # type: ignore[arg-type]
