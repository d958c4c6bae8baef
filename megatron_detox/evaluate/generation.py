"""The evaluation's use of the generation stage: N continuations per prompt, resumable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.evaluate.toxicity_eval import GenerateFn
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.tokenizers.base import Tokenizer

Loaded = tuple[Transformer, Tokenizer, ModelConfig] | Any
"""``(model, tokenizer, config)`` for one process, or an ``inference.InferenceModel`` (its
``layout`` says this rank's share under torchrun)."""


def generation_finished(work_dir: Path, settings: dict[str, Any]) -> Path | None:
    """The merged file of a finished stage run with exactly ``settings``, else None.

    The stage writes ``manifest.json`` after the merge, so its presence means complete.
    """
    run, merged, manifest = work_dir / "run.json", work_dir / "generations.jsonl", work_dir / "manifest.json"
    if not (run.is_file() and merged.is_file() and manifest.is_file()):
        return None
    try:
        previous = json.loads(run.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return merged if previous == settings else None


def build_generate_fn(
    load: Callable[[], Loaded],
    *,
    model_name: str,
    samples: int,
    max_new_tokens: int,
    top_p: float,
    temperature: float,
    seed: int,
    batch_size: int,
    cpu_workers: int = 0,
    progress: bool = True,
) -> GenerateFn:
    """A ``GenerateFn`` running ``megatron_detox.generate.run_generation_stage``.

    Sample ``s`` of prompt ``p`` has id ``p * samples + s`` and its own generator seeded
    from ``(seed, id)``, so its text does not depend on the batch size; the stage's
    journal makes a rerun after a kill continue instead of starting over. ``load`` is
    called (once) only when there is something to generate, so rerunning a finished
    evaluation does not load the model.
    """
    from megatron_detox.generate import SamplingParams

    try:
        params = SamplingParams(temperature=temperature, top_p=top_p)
    except ValueError as error:
        raise UserError(f"sampling: {error}") from None
    cache: list[Loaded] = []

    def generate(texts: Sequence[str], work_dir: Path) -> Path:
        from megatron_detox.generate import GenerationSpec, default_stop_ids, prompt_items, run_generation_stage

        digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
        settings = {"model": model_name, "seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature,
                    "top_p": top_p, "repeat": samples, "num_prompts": len(texts), "prompts_sha256": digest}
        finished = generation_finished(work_dir, settings)
        if finished is not None:
            return finished
        if not cache:
            cache.append(load())
        loaded = cache[0]
        parallel: dict[str, Any] = {}
        if isinstance(loaded, tuple):
            model, tokenizer, cfg = loaded
        else:
            model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.config
            layout = loaded.layout
            parallel = {"dp_rank": layout.dp_rank, "dp_size": layout.dp_size, "writer_rank": layout.writer_rank,
                        "merger_rank": layout.merger_rank, "barrier": loaded.barrier,
                        "agree_batch_size": loaded.agree_batch_size}
        spec = GenerationSpec.for_model(params, tokenizer, cfg, max_new_tokens=max_new_tokens, seed=seed,
                                        stop_ids=default_stop_ids(tokenizer, cfg))
        merged = run_generation_stage(model, tokenizer, prompt_items(list(texts), samples), work_dir, spec,
                                      settings=settings, batch_size=batch_size, cpu_workers=cpu_workers,
                                      progress=progress and parallel.get("merger_rank", True), **parallel)
        return work_dir / "generations.jsonl" if merged is None else Path(merged)  # None: not the merging rank

    return generate
