"""The corpus stages: generate (or take the DAPT corpus) -> score -> filter -> preprocess.

Each is ``settings(cfg)`` (what decides its output; a change reruns it and what follows)
plus ``run(ctx, upstream)`` calling the existing stage code: ``generate.run_generation_stage``,
``scoring.score_file``, ``scoring.filter_file``, ``data.preprocess``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.jsonl import get_dotted, iter_jsonl, read_json
from megatron_detox.sgeat.context import RunContext, StageResult

GENERATIONS = "generations.jsonl"
SCORED = "scored.jsonl"
KEPT = "kept.jsonl"
CORPUS_PREFIX = "corpus"
DOCUMENTS = "documents.jsonl"  # a generated corpus's training documents (context, text, ends)
SCORE_CACHE = "scores.sqlite"  # beside the stage folders: survives a rerun of the score stage


def text_key(ctx: RunContext) -> str:
    """Where the corpus records keep their text: ``data.json_key`` for a DAPT corpus, ``text`` for ours."""
    return ctx.cfg.data.json_key if ctx.cfg.sgeat.mode == "dapt" else "text"


# --------------------------------------------------------------------------- generate


def generate_settings(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    if cfg.sgeat.mode == "dapt":
        corpus = Path(cfg.sgeat.corpus or "")
        return {"mode": "dapt", "corpus": str(corpus.resolve()), "json_key": cfg.data.json_key}
    g = dataclasses.asdict(cfg.generate)
    g.pop("batch_size")  # the text of a sample does not depend on it
    if cfg.sgeat.mode == "standard":
        for name in ("prompts", "prompt_key", "repeat", "num_prompts"):
            g.pop(name)
    else:
        g.pop("num_samples")
        g["prompts"] = str(Path(cfg.generate.prompts or "").resolve())
    return {"mode": cfg.sgeat.mode, "model": cfg.model.pretrained, "generate": g}


def run_generate(ctx: RunContext, upstream: list[Path]) -> StageResult:
    cfg, out = ctx.cfg, ctx.stage_dir("generate")
    if cfg.sgeat.mode == "dapt":
        return _take_corpus(ctx)
    from megatron_detox.generate import (
        GenerationSpec,
        SamplingParams,
        default_stop_ids,
        prompt_items,
        read_prompts,
        run_generation_stage,
        unconditional_items,
    )
    g = cfg.generate
    if cfg.sgeat.mode == "prompted":
        items = prompt_items(read_prompts(g.prompts or "", g.prompt_key, limit=g.num_prompts), g.repeat)
    else:
        items = unconditional_items(g.num_samples)
    loaded = ctx.load_base_model(sharded=True)  # every rank: its shard of cfg.parallel
    model, tokenizer, mcfg = loaded.model, loaded.tokenizer, loaded.config
    params = SamplingParams(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, greedy=g.greedy)
    stops = () if g.ignore_eos else default_stop_ids(tokenizer, mcfg)
    spec = GenerationSpec.for_model(params, tokenizer, mcfg, max_new_tokens=g.max_new_tokens, seed=g.seed,
                                    stop_ids=stops, option="generate.max_new_tokens")
    layout = loaded.layout
    settings = {**generate_settings(ctx), "stop_ids": list(stops), "num_samples": len(items)}
    run_generation_stage(model, tokenizer, items, out, spec, settings=settings, batch_size=g.batch_size,
                         dp_rank=layout.dp_rank, dp_size=layout.dp_size, writer_rank=layout.writer_rank,
                         merger_rank=layout.merger_rank, barrier=loaded.barrier, progress=ctx.progress,
                         agree_batch_size=loaded.agree_batch_size, cpu_workers=g.cpu_workers)
    if not ctx.is_main:
        return StageResult({}, {}, "")
    counts = read_json(out / "manifest.json")["counts"]
    return StageResult({"generate/" + GENERATIONS: out / GENERATIONS}, counts,
                       f"{counts['samples']} samples, {counts['tokens']} tokens ({counts['eos']} ended at a stop "
                       f"token {list(stops)}, {counts['length']} at {g.max_new_tokens} tokens)")


def _take_corpus(ctx: RunContext) -> StageResult:
    """DAPT: no generation; the user's corpus is this stage's output (checked, counted, not copied)."""
    corpus = Path(ctx.cfg.sgeat.corpus or "")
    key = ctx.cfg.data.json_key
    records = 0
    for line, record in iter_jsonl(corpus):
        try:
            value = get_dotted(record, key)
        except KeyError:
            raise UserError(f"{corpus}:{line}: field {key!r} is missing; set data.json_key to the field "
                            "holding the text") from None
        if not isinstance(value, str):
            raise UserError(f"{corpus}:{line}: field {key!r} is {type(value).__name__}, expected a string")
        records += 1
    if not records:
        raise UserError(f"{corpus}: sgeat.corpus holds no records")
    return StageResult({str(corpus.resolve()): corpus}, {"records": records},
                       f"DAPT corpus {corpus}: {records} records (no generation)")


# --------------------------------------------------------------------------- score


def score_settings(ctx: RunContext) -> dict[str, Any]:
    s = dataclasses.asdict(ctx.cfg.score)
    for name in ("qps", "workers"):  # pace, not result
        s.pop(name)
    return {"score": s, "text_key": text_key(ctx)}


def run_score(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.scoring import ScoreCache, score_file
    from megatron_detox.scoring.from_config import scorer_from_config

    out = ctx.stage_dir("score")
    with scorer_from_config(ctx.cfg.score) as scorer, ScoreCache(ctx.work_dir / SCORE_CACHE) as cache:
        summary = score_file(upstream[0], out / SCORED, scorer, cache, text_key(ctx),
                             workers=ctx.cfg.score.workers, progress=ctx.progress)
        name = f"{scorer.name} ({scorer.version})"
    counts = {**summary.as_dict(), "scorer": name}
    counts.pop("elapsed_s")
    if summary.num_retryable_errors:
        raise UserError(f"score: {summary.num_retryable_errors} texts failed with errors worth retrying "
                        f"(see score_error in {out / SCORED}); rerun the same command to retry them")
    return StageResult({"score/" + SCORED: out / SCORED}, counts,
                       f"{summary.num_scored}/{summary.num_records} records scored with {name} "
                       f"({summary.num_from_cache} from cache, {summary.num_errors} errors)")


# --------------------------------------------------------------------------- filter


def filter_settings(ctx: RunContext) -> dict[str, Any]:
    return {"keep_fraction": ctx.cfg.sgeat.keep_fraction, "attribute": ctx.cfg.sgeat.filter_attribute}


def run_filter(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.scoring import filter_file

    out = ctx.stage_dir("filter")
    stats = filter_file(upstream[0], out / KEPT, ctx.cfg.sgeat.keep_fraction, ctx.cfg.sgeat.filter_attribute,
                        out / "filter_stats.json")
    if not stats["num_kept"]:
        raise UserError(f"filter: no record kept of {stats['num_records']} ({stats['num_scored']} scored); "
                        "raise sgeat.keep_fraction or generate more samples")
    counts = {k: stats[k] for k in ("num_records", "num_scored", "num_unscored", "num_kept", "threshold")}
    counts["mean_before"], counts["mean_after"] = stats["before"]["mean"], stats["after"]["mean"]
    return StageResult({"filter/" + KEPT: out / KEPT}, counts,
                       f"kept {stats['num_kept']}/{stats['num_scored']} scored records "
                       f"({stats['attribute']} <= {stats['threshold']:.4f}; mean {counts['mean_before']:.4f} -> "
                       f"{counts['mean_after']:.4f})")


# --------------------------------------------------------------------------- preprocess


def preprocess_settings(ctx: RunContext) -> dict[str, Any]:
    settings = {"tokenizer": ctx.cfg.data.tokenizer, "model_tokenizer": ctx.cfg.model.tokenizer,
                "text_key": text_key(ctx)}
    if ctx.cfg.sgeat.mode == "prompted":
        settings["prompt_tokens"] = ctx.cfg.sgeat.prompt_tokens
    return settings


def _training_documents(ctx: RunContext, kept: Path, out: Path) -> Path:
    """A generated corpus as training documents: ``context`` (no loss), ``text``, ``ends``.

    ``ends`` is false for a sample cut at ``generate.max_new_tokens``: it did not end, so its
    end-of-document token carries no loss (else the model learns to stop at that length).
    In prompted mode ``sgeat.prompt_tokens`` places the prompt: the context (``context``), the
    trained text (``train``) or nowhere (``drop``).
    """
    from megatron_detox.atomic import atomic_output
    from megatron_detox.scoring.records import dump_record

    placement = ctx.cfg.sgeat.prompt_tokens if ctx.cfg.sgeat.mode == "prompted" else "drop"
    path = out / DOCUMENTS
    with atomic_output(path) as handle:
        for _, record in iter_jsonl(kept):
            prompt, text = record["prompt"], record["text"]
            context = prompt if placement == "context" else ""
            text = prompt + text if placement == "train" else text
            handle.write(dump_record({"id": record["id"], "context": context, "text": text,
                                      "ends": record["finish_reason"] != "length"}))
    return path


def corpus_tokenizer(ctx: RunContext) -> Any:
    """``data.tokenizer``, else the base model's own (already loaded when generation ran here)."""
    from megatron_detox.inference import tokenizer_spec_for
    from megatron_detox.tokenizers import load_tokenizer

    if ctx.cfg.data.tokenizer is not None:
        return load_tokenizer(ctx.cfg.data.tokenizer)
    if "base" in ctx.models:
        return ctx.models["base"].tokenizer
    spec = ctx.cfg.model.pretrained
    checkpoint = spec is not None and Path(spec).is_dir() and not (Path(spec) / "config.json").is_file()
    return load_tokenizer(tokenizer_spec_for(None if checkpoint else spec, ctx.cfg.model.to_model_config()))


def run_preprocess(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.data import preprocess
    from megatron_detox.data.loss_mask import loss_mask_prefix

    out = ctx.stage_dir("preprocess")
    tokenizer = corpus_tokenizer(ctx)
    prefix = out / CORPUS_PREFIX
    dapt = ctx.cfg.sgeat.mode == "dapt"  # the user's corpus as it is; a generated one as training documents
    source = upstream[0] if dapt else _training_documents(ctx, upstream[0], out)
    report = preprocess(source, prefix, tokenizer, json_key=text_key(ctx), append_eod=True,
                        context_key=None if dapt else "context", ends_key=None if dapt else "ends",
                        workers=max(ctx.cfg.data.num_workers, 1), progress=ctx.progress)
    outputs = {f"preprocess/{CORPUS_PREFIX}{suffix}": Path(f"{prefix}{suffix}") for suffix in (".bin", ".idx")}
    mask = loss_mask_prefix(prefix)
    if Path(mask + ".idx").is_file():
        outputs.update({f"preprocess/{Path(mask).name}{suffix}": Path(mask + suffix) for suffix in (".bin", ".idx")})
    return StageResult(outputs, {"documents": report.documents, "tokens": report.tokens,
                                 "loss_tokens": report.loss_tokens},
                       f"{report.documents} documents, {report.tokens} tokens ({report.loss_tokens} carry loss) "
                       f"-> {prefix}.bin/.idx")
