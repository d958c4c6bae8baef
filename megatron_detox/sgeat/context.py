"""What every stage gets: the config, the run folder, this rank's place, loaded models."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from megatron_detox.config import RunConfig
from megatron_detox.errors import UserError


def packaged_file(name: str) -> Path:
    """A data file shipped in ``megatron_detox/data/packaged`` (see its README for sources)."""
    path = Path(str(resources.files("megatron_detox.data") / "packaged" / name))
    if not path.is_file():  # an install without package data: a packaging bug, not a user mistake
        raise FileNotFoundError(f"packaged data file {path} is missing; reinstall megatron-detox")
    return path


@dataclass(frozen=True)
class StageResult:
    outputs: dict[str, Path]
    """Files later stages read (their checksums go into the manifest)."""
    counts: dict[str, Any]
    summary: str
    """One line for the stage's end message."""


@dataclass
class RunContext:
    cfg: RunConfig
    work_dir: Path
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    models: dict[str, Any] = field(default_factory=dict)
    """Loaded inference models by name, kept between stages in a single process."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def stage_dir(self, name: str) -> Path:
        return self.work_dir / name

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"sgeat: {message}", file=sys.stderr, flush=True)

    def load_model(self, name: str, *, model: str | None = None, checkpoint: str | Path | None = None,
                   sharded: bool = False) -> Any:
        """An ``InferenceModel``; cached by ``name`` in a single process.

        ``sharded``: every rank calls this, and each loads its shard of the
        ``parallel.tp`` x ``parallel.pp`` layout (generation); else this rank loads it whole.
        """
        if name in self.models and (not sharded or self.world_size == 1):
            return self.models[name]
        from megatron_detox.inference import load_for_inference

        layout = (self.cfg.parallel.tp, self.cfg.parallel.pp) if sharded else None
        loaded = load_for_inference(model, checkpoint=checkpoint, layout=layout)
        if sharded and self.world_size > 1:
            return loaded
        if self.world_size == 1:
            self.models[name] = loaded
        return loaded

    def load_base_model(self, sharded: bool = False) -> Any:
        """``model.pretrained``: a preset with weights, a .gguf, an HF folder or a run/checkpoint of ours."""
        spec = self.cfg.model.pretrained
        if spec is None:
            raise UserError("model.pretrained: sgeat run needs the weights to detoxify (e.g. smollm2-135m)")
        path = Path(spec).expanduser()
        if path.is_dir() and ((path / "meta.json").is_file() or (path / "checkpoints").is_dir()):
            return self.load_model("base", checkpoint=path, sharded=sharded)
        return self.load_model("base", model=spec, sharded=sharded)
