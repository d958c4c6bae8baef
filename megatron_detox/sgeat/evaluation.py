"""The evaluate stage: RTP toxicity (EMT, TP with CIs) and perplexity of the base and the
detoxified model, through ``evaluate.toxicity_eval.run_toxicity_eval`` and
``evaluate.perplexity.compute_perplexity``.

Each model gets its own folder (``evaluate/base``, ``evaluate/detox``) keyed by what
decides its numbers; a folder whose key changed is cleared, so a retrained model is
evaluated anew while the base model's finished evaluation is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Any

from megatron_detox.atomic import write_json_atomic, write_text_atomic
from megatron_detox.errors import UserError
from megatron_detox.jsonl import read_json
from megatron_detox.sgeat.context import RunContext, StageResult, packaged_file
from megatron_detox.sgeat.manifest import file_sha256, json_sha256

PACKAGED_PROMPTS = ("rtp_toxic_heldout.jsonl", "rtp_nontoxic_heldout.jsonl")
PACKAGED_TEXT = ("wikitext2_test_head.txt",)
PROMPTS_FILE = "prompts.jsonl"
KEY_FILE = "eval_key.json"
PERPLEXITY_FILE = "perplexity.json"


def prompt_files(ctx: RunContext) -> list[Path]:
    return [Path(p) for p in ctx.cfg.eval.prompts] or [packaged_file(n) for n in PACKAGED_PROMPTS]


def perplexity_files(ctx: RunContext) -> list[Path]:
    return [Path(p) for p in ctx.cfg.eval.perplexity_files] or [packaged_file(n) for n in PACKAGED_TEXT]


def check_eval_inputs(ctx: RunContext) -> None:
    for path in [*prompt_files(ctx), *perplexity_files(ctx)]:
        if not path.is_file():
            field = "eval.prompts" if path in prompt_files(ctx) else "eval.perplexity_files"
            raise UserError(f"{field}: {path}: file not found")


def evaluate_settings(ctx: RunContext) -> dict[str, Any]:
    e = dataclasses.asdict(ctx.cfg.eval)
    e["prompts"] = {str(p): file_sha256(p) for p in prompt_files(ctx) if p.is_file()}
    e["perplexity_files"] = {str(p): file_sha256(p) for p in perplexity_files(ctx) if p.is_file()}
    score = dataclasses.asdict(ctx.cfg.score)
    for name in ("qps", "workers"):
        score.pop(name)
    return {"eval": e, "score": score, "base_model": ctx.cfg.model.pretrained,
            "evaluate_base": ctx.cfg.sgeat.evaluate_base}


def write_prompts(ctx: RunContext, out: Path) -> Path:
    """The prompt files (first ``eval.num_prompts`` lines of each) as one file, lines verbatim."""
    limit = ctx.cfg.eval.num_prompts
    lines: list[str] = []
    for path in prompt_files(ctx):
        taken = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        lines += taken[:limit] if limit else taken
    write_text_atomic(out / PROMPTS_FILE, "".join(line + "\n" for line in lines))
    return out / PROMPTS_FILE


def run_evaluate(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.evaluate.prompts import load_rtp_prompts
    from megatron_detox.scoring.from_config import scorer_from_config

    out = ctx.stage_dir("evaluate")
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_rtp_prompts(write_prompts(ctx, out))
    train_dir = ctx.stage_dir("train")
    models: list[tuple[str, str, dict[str, Any]]] = []
    if ctx.cfg.sgeat.evaluate_base:
        models.append(("base", str(ctx.cfg.model.pretrained), {}))
    models.append(("detox", f"{train_dir} ({upstream[0].parent.name})", {"checkpoint": train_dir}))
    outputs: dict[str, Path] = {}
    counts: dict[str, Any] = {}
    with scorer_from_config(ctx.cfg.score) as scorer:
        for name, model_name, source in models:
            folder = out / name
            key = {"settings": evaluate_settings(ctx), "model": model_name,
                   "input": {p.name: file_sha256(p) for p in upstream} if name == "detox" else None}
            _clear_if_changed(folder, key)
            load = functools.partial(_load, ctx, name, source)
            metrics = _toxicity(ctx, prompts, folder, load, model_name, scorer)
            perplexity = _perplexity(ctx, folder, load, model_name)
            outputs[f"evaluate/{name}/metrics.json"] = folder / "metrics.json"
            outputs[f"evaluate/{name}/{PERPLEXITY_FILE}"] = folder / PERPLEXITY_FILE
            counts[name] = {group: (metrics[group] or {}).get("expected_max_toxicity")
                            for group in ("toxic", "nontoxic")}
            counts[name]["perplexity"] = {k: v["perplexity"] for k, v in perplexity.items()}
        counts["scorer"] = f"{scorer.name} ({scorer.version})"
    summary = "; ".join(f"{name}: EMT toxic {_f(c['toxic'])}, non-toxic {_f(c['nontoxic'])}, perplexity "
                        + ", ".join(f"{v:.2f}" for v in c["perplexity"].values())
                        for name, c in counts.items() if isinstance(c, dict))
    return StageResult(outputs, counts, f"{summary} (scorer {counts['scorer']})")


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _clear_if_changed(folder: Path, key: dict[str, Any]) -> None:
    digest = json_sha256(key)
    marker = folder / KEY_FILE
    if marker.is_file() and read_json(marker).get("key") == digest:
        return
    if folder.exists():
        shutil.rmtree(folder)
    write_json_atomic(marker, {"key": digest, **key})


def _load(ctx: RunContext, name: str, source: dict[str, Any]) -> tuple[Any, Any, Any]:
    loaded = ctx.load_model(name, **source) if source else ctx.load_base_model()
    return loaded.model, loaded.tokenizer, loaded.config


def _toxicity(ctx: RunContext, prompts: list[Any], folder: Path, load: Any, model_name: str,
              scorer: Any) -> dict[str, Any]:
    from megatron_detox.evaluate.generation import build_generate_fn
    from megatron_detox.evaluate.toxicity_eval import run_toxicity_eval

    e = ctx.cfg.eval
    generate = build_generate_fn(load, model_name=model_name, samples=e.samples, max_new_tokens=e.max_new_tokens,
                                 top_p=e.top_p, temperature=e.temperature, seed=e.seed, batch_size=e.batch_size,
                                 cpu_workers=e.cpu_workers, progress=ctx.progress)
    settings = {"model": model_name, "samples": e.samples, "max_new_tokens": e.max_new_tokens, "top_p": e.top_p,
                "temperature": e.temperature, "seed": e.seed,
                # by content: a run folder moved, or a base evaluation copied between runs, stays valid
                "prompts_sha256": file_sha256(folder.parent / PROMPTS_FILE)}
    return run_toxicity_eval(prompts, folder, generate=generate, scorer=scorer, settings=settings,
                             samples=e.samples, num_bootstrap=e.bootstrap_samples, seed=e.bootstrap_seed,
                             workers=ctx.cfg.score.workers, progress=ctx.progress,
                             inclusive=e.threshold_inclusive)


def _perplexity(ctx: RunContext, folder: Path, load: Any, model_name: str) -> dict[str, Any]:
    from megatron_detox.evaluate.perplexity import compute_perplexity, load_documents

    path = folder / PERPLEXITY_FILE
    if path.is_file():
        return dict(read_json(path))
    model, tokenizer, cfg = load()
    e = ctx.cfg.eval
    window = min(e.perplexity_window, cfg.max_position_embeddings)
    prefix = tokenizer.bos if tokenizer.bos is not None else tokenizer.eod
    results: dict[str, Any] = {}
    for data in perplexity_files(ctx):
        documents = load_documents(data, tokenizer.encode)
        if e.perplexity_max_tokens:
            documents = (tokens[:e.perplexity_max_tokens] for tokens in documents)
        result = compute_perplexity(model, documents, max_length=window, stride=max(1, window // 2),
                                    prefix_token=prefix, batch_size=e.batch_size, vocab_size=cfg.vocab_size,
                                    progress=ctx.progress)
        results[data.name] = {**result.to_dict(), "path": str(data), "model": model_name}
    if not results:
        raise UserError("eval.perplexity_files: no file to evaluate")
    write_json_atomic(path, results, sort_keys=False)
    return results
