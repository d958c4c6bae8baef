"""Checkpoint folders: atomic layout, pruning, and refusal of corrupt or malicious files."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig
from megatron_detox.train.checkpoint import (
    check_compatible,
    latest_checkpoint,
    load_checkpoint_state,
    model_shape,
    read_meta,
    remove_partial_checkpoints,
    save_checkpoint,
)

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_detox"


def _state(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(3, generator=generator)}}


def _save(run_dir: Path, step: int, keep_last: int = 2) -> Path:
    meta = {"model": model_shape(ModelConfig()), "method": "full"}
    return save_checkpoint(run_dir, step, _state(step), meta, rank=0, keep_last=keep_last)


def test_save_load_latest_and_pruning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000003"]
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt == root / "step_000003" and read_meta(ckpt)["step"] == 3
    target = {"model": {"w": torch.zeros(4, 3), "b": torch.zeros(3)}}
    load_checkpoint_state(ckpt, target)
    assert all(torch.equal(target["model"][k], v) for k, v in _state(3)["model"].items())


def test_partial_checkpoints_are_removed(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    leftover = tmp_path / "checkpoints" / "step_000002.tmp"
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"half")
    remove_partial_checkpoints(tmp_path)
    assert not leftover.exists() and latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_in_metadata(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UserError, match=r"\.metadata: refusing to load: it references posix\.system"):
        load_checkpoint_state(ckpt, {"model": {"w": torch.zeros(4, 3), "b": torch.zeros(3)}})
    assert not marker.exists()


def test_pickle_that_runs_code_is_refused_in_an_entry(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    dcp.save({"extra": _Exploit(marker)}, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    with pytest.raises(UserError, match=r"checkpoint entry 'extra': refusing to load: it references posix\.system"):
        load_checkpoint_state(tmp_path / "ckpt", {"extra": None})
    assert not marker.exists()


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 1)
    target = {"model": {"w": torch.zeros(4, 3), "b": torch.zeros(3)}}
    data = next(ckpt.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:20])
    with pytest.raises(UserError, match=r"corrupt or truncated checkpoint"):
        load_checkpoint_state(ckpt, target)
    metadata = ckpt / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:50])
    with pytest.raises(UserError, match=r"\.metadata: corrupt or truncated checkpoint metadata"):
        load_checkpoint_state(ckpt, target)


def test_bad_pointers_and_meta_are_refused(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 1)
    (tmp_path / "checkpoints" / "latest").write_text("step_000009\n")
    with pytest.raises(UserError, match="latest: names step_000009, which does not exist"):
        latest_checkpoint(tmp_path)
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"meta.json: corrupt"):
        read_meta(ckpt)


def test_other_model_shape_is_named(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 1)
    meta = read_meta(ckpt)
    check_compatible(meta, ModelConfig(), "full", ckpt)
    with pytest.raises(UserError, match="checkpoint has model num_layers=2 but the config gives 4"):
        check_compatible(meta, ModelConfig(num_layers=4), "full", ckpt)
    with pytest.raises(UserError, match="train.method='full', the config says 'adapter'"):
        check_compatible(meta, ModelConfig(), "adapter", ckpt)
    assert json.loads((ckpt / "meta.json").read_text())["format_version"] == 1


def test_nothing_is_loaded_with_weights_only_false() -> None:
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(")
    offenders = [str(path) for path in PACKAGE.rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
