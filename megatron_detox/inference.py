"""A model and its tokenizer, ready for inference, from what a user names on the command line.

One loader for ``generate``, ``eval`` and the lm-eval adapter:

- ``model``: a preset with weights (``smollm2-135m``), a ``.gguf`` file or a Hugging Face folder;
- ``checkpoint``: a checkpoint of ours (a step, ``checkpoints`` or run folder) — full
  fine-tuning, or an adapter/prefix run (its PEFT modules are rebuilt from the config the
  checkpoint records);
- ``peft``: a PEFT checkpoint folder (``run_dir/peft``) applied on top of ``model``.

Every rank builds the model on meta, applies its layout and reads only its shard
(:mod:`megatron_detox.parallel.sharded_load`); a single process is the 1x1 layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_detox.errors import UserError
from megatron_detox.generate.parallel import SINGLE_PROCESS, GenerationLayout
from megatron_detox.models.config import ModelConfig
from megatron_detox.parallel.env import DistEnv
from megatron_detox.tokenizers.base import Tokenizer


@dataclass
class InferenceModel:
    model: Any
    """In eval mode, on the rank's device and dtype: a ``Transformer`` (TP-sharded under torchrun)
    or, with pipeline stages, a ``PipelineDecoder`` around this rank's stage."""
    tokenizer: Tokenizer
    config: ModelConfig
    source: str
    """What was loaded, for manifests and reports."""
    env: DistEnv
    layout: GenerationLayout = SINGLE_PROCESS
    """This rank's place for the generation stage (DP shard, writer, merger)."""

    @property
    def barrier(self) -> Callable[[], None] | None:
        """Synchronizes every rank (None for a single process)."""
        if self.env.mesh is None:
            return None
        import torch.distributed as dist

        return dist.barrier

    @property
    def agree_batch_size(self) -> Callable[[int], int] | None:
        """The minimum of a value over all ranks (None for a single process): TP/PP peers
        must run the same batch, whatever each one's free memory says."""
        if self.env.mesh is None:
            return None
        from megatron_detox.generate.parallel import min_over_ranks

        return min_over_ranks(self.env.device)

    @property
    def device(self) -> torch.device:
        return self.env.device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on the CPU (where bf16 matmuls are slow and less exact)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"--dtype {name}: must be auto, {' or '.join(DTYPES)}")
    return DTYPES[name]


def load_for_inference(
    model: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    peft: str | Path | None = None,
    tokenizer: str | None = None,
    dtype: torch.dtype | str = "auto",
    device: str = "auto",
    layout: tuple[int, int] | None = None,
) -> InferenceModel:
    """Load a model sharded for this rank (``parallel.sharded_load``); the whole model when alone.

    ``layout=(tp, pp)``: join the process group (under ``torchrun``; a collective every rank
    calls) for the ``tp`` x ``pp`` x (the rest) DP layout; each rank allocates and reads only
    its own shard. Without it this process loads the whole model by itself, whatever the
    world size. ``device``: auto | cpu | cuda.
    """
    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.parallel import apply_generation_layout, generation_runner
    from megatron_detox.models.summary import build_meta_model
    from megatron_detox.parallel.env import init_distributed
    from megatron_detox.parallel.sharded_load import load_weights, materialize, open_weights

    weights = open_weights(model, checkpoint)
    cfg = weights.cfg
    # Cheap checks first: a bad tokenizer or PEFT folder must not wait for the weights.
    spec = tokenizer or tokenizer_spec_for(model if checkpoint is None else None, cfg)
    peft_setup = _peft_setup(weights, peft)
    if layout is None:
        env = local_env(cfg, device)
    else:
        env = init_distributed(ParallelConfig(tp=layout[0], pp=layout[1]), cfg, device=device)
    torch_dtype = inference_dtype(dtype, env.device) if isinstance(dtype, str) else dtype
    meta_model = build_meta_model(cfg).to(dtype=torch_dtype)
    if peft_setup is not None:
        from megatron_detox.peft import apply_peft

        apply_peft(meta_model, cfg, *peft_setup)
        meta_model.to(dtype=torch_dtype)
    part, place = apply_generation_layout(meta_model, env)
    materialize([part], env.device)
    load_weights([part], weights)
    source = weights.name
    if peft is not None:
        from megatron_detox.peft import load_peft_checkpoint

        load_peft_checkpoint(part, cfg, peft)
        source = f"{source} + {peft}"
    part.tie_weights()
    from megatron_detox.tokenizers import load_tokenizer

    loaded = load_tokenizer(spec)
    if loaded.vocab_size > cfg.padded_vocab_size:
        raise UserError(f"tokenizer {loaded.name} has {loaded.vocab_size} tokens but the model only "
                        f"{cfg.padded_vocab_size} rows; pass the tokenizer that belongs to the model")
    return InferenceModel(generation_runner(part.eval(), env), loaded, cfg, source, env, place)


def local_env(cfg: ModelConfig, device: str) -> DistEnv:
    """A one-process layout on ``device`` (no process group, no collectives)."""
    from megatron_detox.config import ParallelConfig
    from megatron_detox.parallel.dims import ParallelDims
    from megatron_detox.parallel.env import resolve_device

    dims = ParallelDims.from_config(ParallelConfig(), cfg, 1)
    return DistEnv(rank=0, local_rank=0, world_size=1, device=resolve_device(device), dims=dims, mesh=None)


def _peft_setup(weights: Any, peft: str | Path | None) -> tuple[str, Any] | None:
    """``(method, PeftConfig)`` of the PEFT modules to build before loading, None without PEFT."""
    from megatron_detox.peft.checkpoint import peft_config_from_metadata

    method = weights.meta.get("method", "full")
    if weights.checkpoint is not None and method != "full":
        if peft is not None:
            raise UserError(f"--peft {peft}: the checkpoint {weights.name} already holds train.method={method!r} "
                            "modules; pass one or the other")
        if "peft" not in weights.meta:
            raise UserError(f"{weights.name}/meta.json: a train.method={method!r} checkpoint without its 'peft' "
                            "config; load the base model with --model and the run's PEFT folder with --peft")
        return method, peft_config_from_metadata(weights.meta["peft"], f"{weights.name}/meta.json")
    if peft is None:
        return None
    from megatron_detox.peft.checkpoint import WEIGHTS_FILE, read_peft_metadata

    meta = read_peft_metadata(peft)
    return meta["method"], peft_config_from_metadata(meta, str(Path(peft) / WEIGHTS_FILE))


def tokenizer_spec_for(model_spec: str | None, cfg: ModelConfig) -> str:
    """Where the tokenizer of a model lives: its GGUF file or HF folder, else what the config names."""
    from megatron_detox.models.presets import PRESETS

    if model_spec is not None and model_spec not in PRESETS:
        path = Path(model_spec).expanduser()
        if path.suffix == ".gguf" or path.is_dir():
            return str(path)
    if cfg.tokenizer == "gguf":
        # The embedded SmolLM2 GGUF (checkpoints fine-tuned from it record tokenizer="gguf").
        from megatron_detox.models.embedded import ensure_embedded_gguf

        return str(ensure_embedded_gguf())
    if cfg.tokenizer and Path(cfg.tokenizer).expanduser().exists():
        return cfg.tokenizer
    raise UserError(f"model {cfg.name!r} names tokenizer {cfg.tokenizer!r}, which is not a file here; "
                    "pass --tokenizer with a tokenizer file or folder")
