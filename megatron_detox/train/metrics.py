"""Per-step metrics: ``metrics.jsonl`` (one object per optimizer step), TensorBoard when installed.

Exactly-once across restarts: when a run resumes from step ``k``, lines for steps after
``k`` (written before the kill, possibly torn) are dropped by rewriting the file through
a temporary file and rename; then new lines are appended. So the file always holds each
step once, with the values of the run that produced the checkpointed state.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

from megatron_detox.diskfull import on_disk_full
from megatron_detox.models.config import ModelConfig


def train_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Model FLOPs per trained token (forward + backward = 3 x forward), Megatron's formula.

    Matmuls only: 2 FLOPs per multiply-add; attention scores and values ``2 * 2 * s * h``
    per layer (no causal discount, as in Megatron-LM's reporting); the LM head.
    """
    h, f, layers = cfg.hidden_size, cfg.ffn_size, cfg.num_layers
    kv = cfg.kv_heads * cfg.head_dim
    attention_proj = 2 * h * h + 2 * h * kv
    mlp = (3 if cfg.activation == "swiglu" else 2) * h * f
    forward = 2 * layers * (attention_proj + mlp) + 2 * 2 * layers * seq_length * h + 2 * h * cfg.padded_vocab_size
    return 3.0 * forward


def memory_gib(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a metrics file (a torn last line is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    """Appends one JSON line per record; only the main rank writes."""

    def __init__(self, path: Path, *, resume_step: int, enabled: bool, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self._tb: Any = None
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)
        self._handle = open(path, "a", encoding="utf-8")
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError:  # the tensorboard package is optional
                pass
            else:
                self._tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # One write + flush per line: a kill leaves at most one torn line, dropped on resume.
        with on_disk_full(self.path):
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):  # a full disk was reported when the line failed
                self._handle.close()
            if self._tb is not None:
                self._tb.close()
