"""The ``eval toxicity`` metric step: scored generations + prompts -> ``metrics.json``.

Input records (one JSON object per line, as the generation + scoring stages write
them) need ``prompt_index`` (0-based line of the prompt file among non-blank lines)
and ``scores.toxicity`` (a number in [0, 1]; null, a missing ``scores`` or a missing
``toxicity`` means *unscored*). ``sample_index``, when present, must not repeat
within a prompt: a duplicate is reported rather than counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_detox.atomic import check_run_settings, write_json_atomic, write_text_atomic
from megatron_detox.errors import UserError
from megatron_detox.evaluate.prompts import RtpPrompt
from megatron_detox.evaluate.rtp_metrics import compute_toxicity_metrics, is_score, per_prompt_rows
from megatron_detox.jsonl import iter_jsonl

if TYPE_CHECKING:
    from megatron_detox.scoring import Scorer

METRICS_FILE = "metrics.json"
PER_PROMPT_FILE = "per_prompt.jsonl"


def collect_scores(
    records: Iterable[tuple[int, dict[str, Any]]], num_prompts: int, source: Path,
    attribute: str = "toxicity",
) -> tuple[list[list[float | None]], str | None]:
    """Group sample toxicities by prompt: ``(scores_by_prompt, scorer name or None)``.

    ``records`` yields ``(line, record)``. A bad ``prompt_index`` or an out-of-range
    score is a ``UserError`` naming the line.
    """
    scores: list[list[float | None]] = [[] for _ in range(num_prompts)]
    seen: set[tuple[int, int]] = set()
    scorer: str | None = None
    for line, record in records:
        index = record.get("prompt_index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise UserError(f"{source}:{line}: field 'prompt_index' must be an integer (0-based line of the "
                            f"prompt file), got {index!r}")
        if not 0 <= index < num_prompts:
            raise UserError(f"{source}:{line}: prompt_index={index} is outside the prompt file's "
                            f"{num_prompts} prompts; pass the prompt file these generations came from")
        sample = record.get("sample_index")
        if isinstance(sample, int):
            if (index, sample) in seen:
                raise UserError(f"{source}:{line}: duplicate record for prompt_index={index}, "
                                f"sample_index={sample}; each sample must appear once")
            seen.add((index, sample))
        value = _score(record, attribute, source, line)
        scores[index].append(value)
        name = _scorer_name(record)
        if name is not None:
            scorer = scorer or name
    return scores, scorer


def _score(record: dict[str, Any], attribute: str, source: Path, line: int) -> float | None:
    block = record.get("scores")
    if not isinstance(block, dict):
        return None
    value = block.get(attribute)
    if value is None:
        return None
    if not is_score(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{source}:{line}: field 'scores.{attribute}'={value!r} is not a probability in [0, 1]")
    return float(value)


def _scorer_name(record: dict[str, Any]) -> str | None:
    scorer = record.get("scorer")
    if isinstance(scorer, dict) and isinstance(scorer.get("name"), str):
        return str(scorer["name"])
    if isinstance(scorer, str):
        return scorer
    return None


def metrics_from_scored(
    scored_path: str | Path,
    prompts: Sequence[RtpPrompt],
    out_dir: str | Path,
    *,
    scorer: str | None = None,
    expected_samples: int | None = None,
    num_bootstrap: int = 1000,
    seed: int = 0,
    inclusive: bool = True,
) -> dict[str, Any]:
    """Compute and write ``out_dir/metrics.json`` and ``out_dir/per_prompt.jsonl``."""
    scored_path = Path(scored_path)
    scores, recorded_scorer = collect_scores(iter_jsonl(scored_path), len(prompts), scored_path)
    if expected_samples is None:
        counts = [len(s) for s in scores]
        expected_samples = max(counts) if counts else 0
    metrics = compute_toxicity_metrics(
        prompts, scores, scorer=scorer or recorded_scorer or "unknown",
        expected_samples=expected_samples, num_bootstrap=num_bootstrap, seed=seed, inclusive=inclusive)
    metrics["source"] = str(scored_path)
    write_metrics(Path(out_dir), metrics, per_prompt_rows(prompts, scores))
    return metrics


def write_metrics(out_dir: Path, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_text_atomic(out_dir / PER_PROMPT_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    # metrics.json last: its presence means the step finished.
    write_json_atomic(out_dir / METRICS_FILE, metrics, sort_keys=False)


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Human-readable lines for the CLI."""
    lines = [f"scorer: {metrics['scorer']}"]
    for group in ("all", "toxic", "nontoxic"):
        block = metrics.get(group)
        if not block or block["expected_max_toxicity"] is None:
            lines.append(f"{group:>8}: no scored prompts")
            continue
        emt, tp = block["expected_max_toxicity"], block["toxicity_probability"]
        emt_ci = block["expected_max_toxicity_ci"] or [float("nan")] * 2
        tp_ci = block["toxicity_probability_ci"] or [float("nan")] * 2
        lines.append(f"{group:>8}: EMT {emt:.3f} [{emt_ci[0]:.3f}, {emt_ci[1]:.3f}]  "
                     f"TP {tp:.3f} [{tp_ci[0]:.3f}, {tp_ci[1]:.3f}]  prompts {block['num_prompts']}")
    lines.append(f"unscored samples: {metrics['num_unscored']}, unscored prompts: {metrics['num_unscored_prompts']}")
    if metrics.get("split_note"):
        lines.append(f"note: {metrics['split_note']}")
    return lines


# --------------------------------------------------------------------------- the full stage

GENERATION_DIR = "generation"
SCORED_FILE = "scored.jsonl"
SETTINGS_FILE = "eval_settings.json"
GenerateFn = Callable[[Sequence[str], Path], Path]
"""``(prompt texts, work folder) -> generations file``: write every sample as a JSONL
record with at least ``prompt_index``, ``sample_index`` and ``text``, resumably (a rerun
after a kill continues; a finished run is left as it is)."""


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a run folder made with other settings (it would mix two runs)."""
    check_run_settings(out_dir / SETTINGS_FILE, settings, "pass a new --out folder (or delete this one)")


def run_toxicity_eval(
    prompts: Sequence[RtpPrompt],
    out_dir: str | Path,
    *,
    generate: GenerateFn,
    scorer: Scorer,
    settings: dict[str, Any],
    samples: int,
    num_bootstrap: int = 1000,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    inclusive: bool = True,
) -> dict[str, Any]:
    """Generate -> score (SQLite-cached) -> metrics, each step resumable.

    Rerunning the same command after a kill continues where it stopped: generation
    resumes from its own journal, scoring answers finished texts from
    ``out_dir/scores.sqlite``, and the metrics are recomputed from the scored file.
    """
    from megatron_detox.scoring import ScoreCache, score_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, {**settings, "scorer": scorer.cache_namespace})
    generations = generate([p.text for p in prompts], out / GENERATION_DIR)
    with ScoreCache(out / "scores.sqlite") as cache:
        summary = score_file(generations, out / SCORED_FILE, scorer, cache, text_key="text",
                             workers=workers, progress=progress)
    metrics = metrics_from_scored(out / SCORED_FILE, prompts, out, scorer=scorer.name,
                                  expected_samples=samples, num_bootstrap=num_bootstrap, seed=seed,
                                  inclusive=inclusive)
    metrics["scoring"] = summary.as_dict()
    metrics["settings"] = settings
    write_json_atomic(out / METRICS_FILE, metrics, sort_keys=False)
    return metrics
