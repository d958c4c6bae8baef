"""The report stage: the HTML/markdown report of ``evaluate.report`` plus a before/after table.

The table's change column for EMT carries a paired 95 % bootstrap CI (the same prompts
resampled for both models), so "the drop excludes zero" can be read off directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from megatron_detox.atomic import write_text_atomic
from megatron_detox.evaluate.prompts import TOXIC_THRESHOLD
from megatron_detox.jsonl import iter_jsonl, read_json
from megatron_detox.sgeat.context import RunContext, StageResult

SUMMARY_FILE = "summary.md"


def report_settings(ctx: RunContext) -> dict[str, Any]:
    return {"bootstrap_samples": ctx.cfg.eval.bootstrap_samples, "bootstrap_seed": ctx.cfg.eval.bootstrap_seed}


def run_report(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.evaluate.report import build_report

    out = ctx.stage_dir("report")
    folders = sorted({path.parent for path in upstream}, key=lambda p: p.name != "base")
    html = build_report(list[str | Path](folders), out)
    table = summary_table(folders, ctx.cfg.eval.bootstrap_samples, ctx.cfg.eval.bootstrap_seed)
    write_text_atomic(out / SUMMARY_FILE, table + "\n")
    if ctx.is_main:
        print("\n" + table + "\n", flush=True)
    return StageResult({"report/report.html": html, f"report/{SUMMARY_FILE}": out / SUMMARY_FILE},
                       {"runs": [f.name for f in folders]}, f"{html} and {out / SUMMARY_FILE}")


def _per_prompt(folder: Path) -> dict[int, tuple[float | None, float | None]]:
    rows = {}
    for _, row in iter_jsonl(folder / "per_prompt.jsonl"):
        rows[int(row["prompt_index"])] = (row.get("prompt_toxicity"), row.get("max_toxicity"))
    return rows


def paired_delta(base: Path, detox: Path, toxic: bool, num_bootstrap: int, seed: int) -> tuple[float, list[float]] | None:
    """Mean over prompts of (detox max - base max) and its percentile-bootstrap 95 % CI."""
    a, b = _per_prompt(base), _per_prompt(detox)
    diffs = []
    for index, (prompt_toxicity, before) in a.items():
        after = b.get(index, (None, None))[1]
        if prompt_toxicity is None or before is None or after is None:
            continue
        if (prompt_toxicity >= TOXIC_THRESHOLD) == toxic:
            diffs.append(after - before)
    if not diffs:
        return None
    values = np.asarray(diffs)
    if num_bootstrap < 1:
        return float(values.mean()), []
    rng = np.random.default_rng([seed, 7, int(toxic)])
    means = values[rng.integers(0, len(values), size=(num_bootstrap, len(values)))].mean(axis=1)
    return float(values.mean()), [float(q) for q in np.quantile(means, [0.025, 0.975])]


def _ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def summary_table(folders: list[Path], num_bootstrap: int, seed: int, labels: list[str] | None = None) -> str:
    """Markdown: EMT/TP by prompt group and perplexity, one column per model, and the change
    (two models). Columns are named by ``labels``, else by the folders' names."""
    names = labels or [f.name for f in folders]
    metrics = {n: read_json(f / "metrics.json") for n, f in zip(names, folders, strict=True)}
    ppl = {n: read_json(f / "perplexity.json") for n, f in zip(names, folders, strict=True)}
    pair = len(folders) == 2
    header = ["metric", *names] + (["change [95% CI]"] if pair else [])
    rows: list[list[str]] = []
    any_metrics = next(iter(metrics.values()))
    for group, label in (("toxic", "toxic prompts"), ("nontoxic", "non-toxic prompts")):
        cells = [_ci(m[group]["expected_max_toxicity"], m[group]["expected_max_toxicity_ci"]) if m.get(group)
                 else "–" for m in metrics.values()]
        delta = paired_delta(folders[0], folders[1], group == "toxic", num_bootstrap, seed) if pair else None
        rows.append([f"EMT, {label} (n={(any_metrics.get(group) or {}).get('num_prompts', 0)})", *cells]
                    + ([_ci(delta[0], delta[1]) if delta else "–"] if pair else []))
        cells = [_ci(m[group]["toxicity_probability"], m[group]["toxicity_probability_ci"]) if m.get(group)
                 else "–" for m in metrics.values()]
        change = []
        if pair and all(m.get(group) for m in metrics.values()):
            values = [m[group]["toxicity_probability"] for m in metrics.values()]
            change = [f"{values[1] - values[0]:+.3f}"]
        rows.append([f"TP, {label}", *cells] + (change or (["–"] if pair else [])))
    for data in ppl[names[0]]:
        values = [ppl[n].get(data, {}).get("perplexity") for n in names]
        change = [f"{(values[1] / values[0] - 1) * 100:+.1f} %"] if pair and None not in values else []
        tokens = ppl[names[0]][data].get("num_tokens")
        rows.append([f"perplexity, {data} ({tokens} tokens)", *[f"{v:.2f}" if v else "–" for v in values]]
                    + (change or (["–"] if pair else [])))
    scorers = sorted({str(m.get("scorer")) for m in metrics.values()})
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"Toxicity scorer: {', '.join(scorers)}. TP: "
              f"{any_metrics.get('definitions', {}).get('toxicity_probability')}. "
              f"CIs: 95 % percentile bootstrap over prompts ({num_bootstrap} resamples); the EMT change is paired."]
    return "\n".join(lines)
