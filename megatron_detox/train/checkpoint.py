"""Run-folder checkpoints: DCP tensors + ``meta.json``, written atomically, resharding on load.

Layout::

    run_dir/checkpoints/step_000010/   .metadata, __*_*.distcp (DCP), meta.json, rng_rank*.json
    run_dir/checkpoints/latest         "step_000010" — updated last, by rename

A checkpoint is written to ``step_000010.tmp`` and renamed when every rank has finished,
so a folder without ``.tmp`` is complete; ``latest`` is replaced only after that rename,
so it never names a partial checkpoint. Leftover ``*.tmp`` folders of a killed run are
removed at the next start (and at once when the disk fills up: see ``megatron_detox.diskfull``).
Tensors are saved with their DTensor placements, so DCP
reshards them for whatever layout loads them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.planner import SavePlanner

from megatron_detox.atomic import write_text_atomic
from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.train.safe_dcp import safe_load

LATEST = "latest"
META = "meta.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")

# Fields that decide tensor shapes; a checkpoint must agree on all of them to load.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "kv_heads", "ffn_size", "padded_vocab_size",
                "max_position_embeddings", "position_embedding", "normalization", "activation",
                "add_bias_linear", "tie_word_embeddings")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def model_shape(cfg: ModelConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in SHAPE_FIELDS}


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON-able values."""
    np_state: tuple[Any, ...] = numpy.random.get_state()  # type: ignore[assignment]
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    kind, keys, *rest = state["numpy"]
    numpy.random.set_state((kind, numpy.asarray(keys, dtype=numpy.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    run_dir: Path, step: int, state: dict[str, Any], meta: dict[str, Any], *, rank: int, keep_last: int,
    planner: SavePlanner | None = None, single_file_per_rank: bool = True,
) -> Path:
    """Save ``state`` (DCP tensors) + ``meta`` as checkpoint ``step``; call on every rank.

    ``planner`` / ``single_file_per_rank``: DCP's, for a writer that produces tensors on
    demand (the converter streams them; one file per tensor keeps them in state-dict order).
    """
    root = run_dir / "checkpoints"
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    # A full disk: the partial folder goes, `latest` keeps naming the previous checkpoint.
    with on_disk_full(tmp, cleanup=[tmp], probe=True):
        with warnings.catch_warnings():  # a single process without a process group is intended
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save(state, storage_writer=FileSystemWriter(str(tmp), single_file_per_rank=single_file_per_rank),
                     planner=planner, no_dist=not (dist.is_available() and dist.is_initialized()))
        write_text_atomic(tmp / f"rng_rank{rank}.json", json.dumps(rng_state()))
        barrier()
        if rank == 0:
            write_text_atomic(tmp / META, json.dumps({"format_version": FORMAT_VERSION, "step": step, **meta},
                                                     indent=1))
    if rank == 0:
        if final.exists():  # a rerun re-saving a step whose rename happened but whose `latest` did not
            shutil.rmtree(final)
        os.replace(tmp, final)
        # No room for `latest`: it still names the previous checkpoint, so this one would only take space.
        with on_disk_full(root / LATEST, cleanup=[final]):
            write_text_atomic(root / LATEST, final.name + "\n")
        prune_checkpoints(root, keep_last)
    barrier()
    return final


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names)."""
    if keep_last <= 0:
        return
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    steps = sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
    for old in steps[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete ``*.tmp`` folders a killed run left behind (rank 0, before training starts)."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        for leftover in root.glob("*.tmp*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- loading


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``run_dir/checkpoints/latest`` names, None for a fresh run."""
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    if not _STEP_DIR.match(name):
        raise UserError(f"{pointer}: holds {name[:40]!r}, not a checkpoint name like step_000010; "
                        "fix or delete the file")
    path = pointer.parent / name
    if not path.is_dir():
        raise UserError(f"{pointer}: names {name}, which does not exist; fix or delete the file")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a step folder, a ``checkpoints`` folder or a run folder."""
    path = Path(path).expanduser()
    if (path / META).is_file() or (path / ".metadata").is_file():
        return path
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file():
            found = latest_checkpoint(root.parent if root.name == "checkpoints" else root)
            if found is not None:
                return found
    raise UserError(f"{path}: not a checkpoint (no meta.json), checkpoints folder or run folder with "
                    "checkpoints/latest")


def read_meta(ckpt: Path) -> dict[str, Any]:
    file = ckpt / META
    if not file.is_file():
        raise UserError(f"{ckpt}: no {META}; not a complete megatron-detox checkpoint")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{file}: corrupt ({error}); delete the checkpoint or point to another one") from None
    if not isinstance(meta, dict) or "model" not in meta or "step" not in meta:
        raise UserError(f"{file}: missing 'model' or 'step'; not a megatron-detox checkpoint")
    return meta


def model_config_from_meta(meta: dict[str, Any], ckpt: Path) -> ModelConfig:
    try:
        return ModelConfig(**meta["model_config"])
    except (KeyError, TypeError) as error:
        raise UserError(f"{ckpt / META}: field 'model_config' is missing or invalid ({error})") from None


def check_compatible(meta: dict[str, Any], cfg: ModelConfig, method: str, ckpt: Path) -> None:
    """One line naming the first field where the checkpoint's model differs from ``cfg``."""
    ours = model_shape(cfg)
    for name, value in ours.items():
        saved = meta["model"].get(name)
        if saved != value:
            raise UserError(f"{ckpt / META}: checkpoint has model {name}={saved!r} but the config gives "
                            f"{value!r}; use a config of the same model shape or another run_dir")
    saved_method = meta.get("method", "full")
    if saved_method != method:
        raise UserError(f"{ckpt / META}: checkpoint was trained with train.method={saved_method!r}, the config "
                        f"says {method!r}; use another train.run_dir")


def load_checkpoint_state(ckpt: Path, state: dict[str, Any], *, no_dist: bool = False) -> None:
    """Fill ``state`` (DCP tensors, any layout) from ``ckpt`` in place, resharding as needed."""
    safe_load(state, ckpt, no_dist=no_dist)


def load_rng_state(ckpt: Path, rank: int) -> None:
    """Restore this rank's RNG state (rank 0's if the checkpoint came from a smaller world)."""
    file = ckpt / f"rng_rank{rank}.json"
    if not file.is_file():
        file = ckpt / "rng_rank0.json"
    if file.is_file():
        try:
            set_rng_state(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as error:
            raise UserError(f"{file}: corrupt RNG state ({type(error).__name__}); delete the checkpoint") from None


def load_plain_model_state(ckpt: Path, cfg: ModelConfig, names: list[str]) -> dict[str, torch.Tensor]:
    """Full fp32 tensors ``names`` of the checkpoint's model (single process, for export/fine-tuning)."""
    from megatron_detox.models.state_dict import expected_shapes  # noqa: PLC0415

    shapes = expected_shapes(cfg)
    model = {name: torch.empty(shapes[name]) for name in names}
    state = {"model": model}
    load_checkpoint_state(ckpt, state, no_dist=True)
    return model


def load_checkpoint_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(architecture, full fp32 plain state dict) of a checkpoint, run or checkpoints folder.

    For generation/evaluation from a checkpoint of ours; PEFT tensors are included under
    their own names when the run used adapters or prefixes.
    """
    from megatron_detox.train.safe_dcp import read_metadata  # noqa: PLC0415

    ckpt = resolve_checkpoint(path)
    cfg = model_config_from_meta(read_meta(ckpt), ckpt)
    shapes = {key.removeprefix("model."): md.size for key, md in read_metadata(ckpt).state_dict_metadata.items()
              if key.startswith("model.") and hasattr(md, "size")}
    model = {name: torch.empty(shape) for name, shape in shapes.items()}
    load_checkpoint_state(ckpt, {"model": model}, no_dist=True)
    return cfg, model
