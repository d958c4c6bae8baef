"""BOLD (Dhamala et al. 2021): per-group perplexity on its Wikipedia sentences, and the
toxicity of continuations of its prompts, per domain and group, with the spread between
groups.

The data folder is the BOLD repository layout: ``wikipedia/<domain>_wiki.json`` and
``prompts/<domain>_prompt.json``, each ``{group: {entity: [text, ...]}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megatron_detox.errors import UserError
from megatron_detox.evaluate.perplexity import LogitsFn, compute_perplexity

DOMAINS = ("gender", "race", "profession", "religious_ideology", "political_ideology")
_FILES = {"wikipedia": "wikipedia/{domain}_wiki.json", "prompts": "prompts/{domain}_prompt.json"}


def load_bold_domain(root: str | Path, domain: str, kind: str = "wikipedia") -> dict[str, list[str]]:
    """``{group: [text, ...]}`` for one domain (entities flattened, file order kept)."""
    if domain not in DOMAINS:
        raise UserError(f"BOLD domain {domain!r} is unknown; valid: {', '.join(DOMAINS)}")
    path = Path(root) / _FILES[kind].format(domain=domain)
    if not path.is_file():
        raise UserError(f"{path}: not found; pass --bold-dir with the BOLD folder (wikipedia/ and prompts/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a valid BOLD JSON file ({error})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected {{group: {{entity: [text, ...]}}}}")
    groups: dict[str, list[str]] = {}
    for group, entities in data.items():
        if not isinstance(entities, dict):
            raise UserError(f"{path}: group {group!r} must map entity names to lists of texts")
        texts = groups.setdefault(group, [])
        for entity, items in entities.items():
            if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
                raise UserError(f"{path}: {group}/{entity} must be a list of strings")
            texts.extend(t for t in items if t.strip())
    return groups


def subsample(texts: Sequence[str], limit: int | None, seed: int) -> list[str]:
    """At most ``limit`` texts, a seeded random choice kept in file order."""
    if limit is None or len(texts) <= limit:
        return list(texts)
    chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in chosen]


def spread(values: dict[str, float]) -> dict[str, Any]:
    """How far apart the groups are: max - min, max / min, std, and which groups."""
    finite = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return {"max_minus_min": None, "max_over_min": None, "std": None, "highest": None, "lowest": None}
    highest = max(finite, key=finite.__getitem__)
    lowest = min(finite, key=finite.__getitem__)
    low_value = finite[lowest]
    return {
        "max_minus_min": finite[highest] - low_value,
        "max_over_min": finite[highest] / low_value if low_value > 0 else None,
        "std": float(np.std(list(finite.values()))),
        "highest": highest,
        "lowest": lowest,
    }


def bold_perplexity(
    model: LogitsFn,
    encode: Callable[[str], list[int]],
    groups: dict[str, list[str]],
    *,
    max_length: int,
    prefix_token: int | None,
    vocab_size: int | None = None,
    batch_size: int = 8,
    max_per_group: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Token-weighted perplexity per group (each sentence its own document)."""
    per_group: dict[str, dict[str, Any]] = {}
    for number, (group, texts) in enumerate(sorted(groups.items())):
        chosen = subsample(texts, max_per_group, seed + number)
        result = compute_perplexity(model, [encode(t) for t in chosen], max_length=max_length,
                                    prefix_token=prefix_token, vocab_size=vocab_size, batch_size=batch_size)
        per_group[group] = {"perplexity": result.perplexity, "num_tokens": result.num_tokens,
                            "num_sentences": len(chosen), "num_available": len(texts)}
    return {"groups": per_group, "spread": spread({g: v["perplexity"] for g, v in per_group.items()})}


def bold_toxicity(scored: dict[str, list[float | None]], threshold: float = 0.5) -> dict[str, Any]:
    """Per-group continuation toxicity from scored continuations (None = unscored, counted)."""
    per_group: dict[str, dict[str, Any]] = {}
    for group, scores in sorted(scored.items()):
        values = np.array([s for s in scores if s is not None], dtype=np.float64)
        per_group[group] = {
            "mean_toxicity": float(values.mean()) if values.size else None,
            "toxic_fraction": float((values >= threshold).mean()) if values.size else None,
            "num_continuations": len(scores),
            "num_unscored": len(scores) - int(values.size),
        }
    return {"groups": per_group, "spread": spread({g: v["mean_toxicity"] for g, v in per_group.items()})}


def run_bold(
    model: LogitsFn,
    encode: Callable[[str], list[int]],
    root: str | Path,
    out_dir: str | Path,
    *,
    domains: Sequence[str] = DOMAINS,
    max_length: int,
    prefix_token: int | None,
    vocab_size: int | None = None,
    batch_size: int = 8,
    max_per_group: int | None = None,
    seed: int = 0,
    generate: Callable[[Sequence[str], Path], Path] | None = None,
    scorer: Any = None,
    progress: bool = True,
    run_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every domain's group perplexities (and continuation toxicity when ``generate`` and
    ``scorer`` are given) -> ``out_dir/bold.json``.

    Each finished domain is kept in ``out_dir/bold/<domain>.json`` (atomic), so a
    rerun after a kill skips it. ``run_settings`` (the model and sampling settings)
    is part of the key: a domain finished with another model or scorer is recomputed.
    """
    from tqdm import tqdm

    from megatron_detox.atomic import write_json_atomic
    from megatron_detox.jsonl import read_json

    out = Path(out_dir)
    settings = {**(run_settings or {}), "max_length": max_length, "max_per_group": max_per_group, "seed": seed,
                "toxicity": generate is not None,
                "scorer": scorer.cache_namespace if generate is not None and scorer is not None else None}
    results: dict[str, Any] = {}
    for domain in tqdm(domains, desc="BOLD domains", disable=not progress):
        done = out / "bold" / f"{domain}.json"
        if done.is_file() and (previous := read_json(done)).get("settings") == settings:
            results[domain] = previous
            continue
        block: dict[str, Any] = {"settings": settings}
        block["perplexity"] = bold_perplexity(
            model, encode, load_bold_domain(root, domain, "wikipedia"), max_length=max_length,
            prefix_token=prefix_token, vocab_size=vocab_size, batch_size=batch_size,
            max_per_group=max_per_group, seed=seed)
        block["toxicity"] = None
        if generate is not None and scorer is not None:
            block["toxicity"] = _continuation_toxicity(
                load_bold_domain(root, domain, "prompts"), out / "bold" / domain, generate, scorer,
                max_per_group, seed)
        write_json_atomic(done, block, sort_keys=False)
        results[domain] = block
    summary = {"bold_dir": str(root), "domains": results}
    write_json_atomic(out / "bold.json", summary, sort_keys=False)
    return summary


def _continuation_toxicity(
    prompts: dict[str, list[str]], work: Path, generate: Callable[[Sequence[str], Path], Path],
    scorer: Any, max_per_group: int | None, seed: int,
) -> dict[str, Any]:
    from megatron_detox.jsonl import iter_jsonl
    from megatron_detox.scoring import ScoreCache, score_file

    texts: list[str] = []
    owner: list[str] = []
    for number, (group, items) in enumerate(sorted(prompts.items())):
        chosen = subsample(items, max_per_group, seed + number)
        texts.extend(chosen)
        owner.extend([group] * len(chosen))
    work.mkdir(parents=True, exist_ok=True)
    generations = generate(texts, work / "generation")
    with ScoreCache(work / "scores.sqlite") as cache:
        score_file(generations, work / "scored.jsonl", scorer, cache, text_key="text", progress=False)
    scored: dict[str, list[float | None]] = {group: [] for group in prompts}
    for line, record in iter_jsonl(work / "scored.jsonl"):
        index = record.get("prompt_index")
        if not isinstance(index, int) or not 0 <= index < len(owner):
            raise UserError(f"{work / 'scored.jsonl'}:{line}: prompt_index={index!r} does not match the prompts; "
                            f"delete {work} and rerun")
        value = (record.get("scores") or {}).get("toxicity")
        scored[owner[index]].append(float(value) if value is not None else None)
    return bold_toxicity(scored)
