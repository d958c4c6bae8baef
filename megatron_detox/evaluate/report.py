"""``megatron-detox report RUN_DIR ...``: compare evaluation runs in markdown + HTML.

Each run folder may hold any of the files the ``eval`` commands write:
``metrics.json`` + ``per_prompt.jsonl`` (toxicity), ``perplexity.json``, ``bold.json``,
``lm_eval.json`` (also looked for under ``RUN_DIR/eval/``). The report folder gets
``report.md`` (figures as PNG files beside it), ``report.html`` (self-contained: the
same figures embedded as base64 PNGs) and ``runs/<name>.json`` (all metrics of a run).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_detox.atomic import write_json_atomic, write_text_atomic
from megatron_detox.errors import UserError
from megatron_detox.evaluate.prompts import TOXIC_THRESHOLD
from megatron_detox.jsonl import iter_jsonl, read_json

EVAL_FILES = {"toxicity": "metrics.json", "perplexity": "perplexity.json", "bold": "bold.json",
              "lm_eval": "lm_eval.json"}


@dataclass
class RunResults:
    name: str
    folder: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    """``{"toxicity": ..., "perplexity": ..., "bold": ..., "lm_eval": ...}`` (those present)."""
    maxima: dict[str, list[float]] = field(default_factory=dict)
    """Per-prompt max toxicity by prompt group, for the distribution plot."""


def load_run(folder: Path, name: str) -> RunResults:
    if not folder.is_dir():
        raise UserError(f"{folder}: run folder not found")
    run = RunResults(name, folder)
    for kind, filename in EVAL_FILES.items():
        for candidate in (folder / filename, folder / "eval" / filename):
            if candidate.is_file():
                run.metrics[kind] = read_json(candidate)
                if kind == "toxicity":
                    run.maxima = _maxima(candidate.with_name("per_prompt.jsonl"))
                break
    if not run.metrics:
        raise UserError(f"{folder}: holds no evaluation results ({', '.join(EVAL_FILES.values())}); "
                        f"run `megatron-detox eval ... --out {folder}` first")
    return run


def _maxima(path: Path) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {"all": [], "toxic": [], "nontoxic": []}
    if not path.is_file():
        return groups
    for _, row in iter_jsonl(path):
        value = row.get("max_toxicity")
        if value is None:
            continue
        groups["all"].append(value)
        prompt_toxicity = row.get("prompt_toxicity")
        if prompt_toxicity is not None:
            groups["toxic" if prompt_toxicity >= TOXIC_THRESHOLD else "nontoxic"].append(value)
    return groups


def run_names(folders: list[Path]) -> list[str]:
    """Folder names, made unique with parent names (then a counter) where runs share one."""
    resolved = [f.resolve() for f in folders]
    plain = [f.name for f in resolved]
    names = [f"{f.parent.name}/{f.name}" if plain.count(f.name) > 1 else f.name for f in resolved]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def build_report(folders: list[str | Path], out: str | Path) -> Path:
    """Write the report folder; return the HTML path."""
    from megatron_detox.evaluate import plots

    if not folders:
        raise UserError("report: pass at least one run folder")
    paths = [Path(f) for f in folders]
    runs = [load_run(path, name) for path, name in zip(paths, run_names(paths))]
    out = Path(out)
    figures: list[tuple[str, str, bytes]] = []  # (file stem, caption, png)
    toxicity = {r.name: r.metrics["toxicity"] for r in runs if "toxicity" in r.metrics}
    if toxicity:
        maxima = {r.name: r.maxima for r in runs if any(r.maxima.values())}
        if maxima:
            figures.append(("toxicity_distribution", "Per-prompt maximum toxicity",
                            plots.toxicity_histograms(maxima)))
        figures.append(("expected_max_toxicity", "Expected Maximum Toxicity",
                        plots.metric_bars(toxicity, "expected_max_toxicity", "Expected Maximum Toxicity")))
        figures.append(("toxicity_probability", "Toxicity Probability",
                        plots.metric_bars(toxicity, "toxicity_probability", "Toxicity Probability")))
    perplexity = {r.name: {k: v.get("perplexity") for k, v in r.metrics["perplexity"].items()}
                  for r in runs if "perplexity" in r.metrics}
    if perplexity:
        figures.append(("perplexity", "Perplexity", plots.grouped_bars(perplexity, "Perplexity", "perplexity")))
    for domain in sorted({d for r in runs for d in r.metrics.get("bold", {}).get("domains", {})}):
        for kind, key, label in (("perplexity", "perplexity", "perplexity"),
                                 ("toxicity", "mean_toxicity", "mean continuation toxicity")):
            values = {r.name: {g: v.get(key) for g, v in block["groups"].items()}
                      for r in runs if (block := _bold_block(r, domain, kind))}
            if values:
                figures.append((f"bold_{domain}_{kind}", f"BOLD {domain}: {label} per group",
                                plots.grouped_bars(values, f"BOLD {domain}: {label} per group", label)))

    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for stem, _, png in figures:
        (figure_dir / f"{stem}.png").write_bytes(png)
    for run in runs:
        write_json_atomic(out / "runs" / f"{run.name.replace('/', '__')}.json",
                          {"name": run.name, "folder": str(run.folder), **run.metrics}, sort_keys=False)
    sections = _sections(runs)
    write_text_atomic(out / "report.md", _markdown(runs, sections, figures))
    html_path = out / "report.html"
    write_text_atomic(html_path, _html(runs, sections, figures))
    return html_path


def _bold_block(run: RunResults, domain: str, kind: str) -> dict[str, Any] | None:
    block = run.metrics.get("bold", {}).get("domains", {}).get(domain, {}).get(kind)
    return block if block and block.get("groups") else None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    if not ci:
        return _fmt(value)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _sections(runs: list[RunResults]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` tables shared by the markdown and HTML renderers."""
    sections = []
    rows = []
    for run in runs:
        tox = run.metrics.get("toxicity")
        if not tox:
            continue
        for group in ("toxic", "nontoxic", "all"):
            block = tox.get(group)
            if block:
                rows.append([run.name, group, _ci(block["expected_max_toxicity"], block["expected_max_toxicity_ci"]),
                             _ci(block["toxicity_probability"], block["toxicity_probability_ci"]),
                             str(block["num_prompts"]), str(tox.get("num_unscored", "–")), str(tox.get("scorer"))])
    if rows:
        sections.append(("Toxicity (RealToxicityPrompts)",
                         ["run", "prompts", "EMT [95% CI]", "TP [95% CI]", "# prompts", "unscored samples", "scorer"],
                         rows))
    rows = [[run.name, data, _fmt(v.get("perplexity"), 2), str(v.get("num_tokens")), str(v.get("max_length")),
             str(v.get("stride"))]
            for run in runs for data, v in run.metrics.get("perplexity", {}).items()]
    if rows:
        sections.append(("Perplexity", ["run", "data", "perplexity", "tokens", "window", "stride"], rows))
    rows = []
    for run in runs:
        for domain, block in run.metrics.get("bold", {}).get("domains", {}).items():
            for kind in ("perplexity", "toxicity"):
                if block.get(kind):
                    sp = block[kind]["spread"]
                    rows.append([run.name, domain, kind, _fmt(sp["max_minus_min"]), _fmt(sp["max_over_min"]),
                                 f"{sp['highest']} / {sp['lowest']}", str(len(block[kind]["groups"]))])
    if rows:
        sections.append(("BOLD spread between groups",
                         ["run", "domain", "measure", "max − min", "max / min", "highest / lowest", "groups"], rows))
    rows = [[run.name, task, metric, _fmt(value, 4)]
            for run in runs for task, metrics in run.metrics.get("lm_eval", {}).get("results", {}).items()
            for metric, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if rows:
        sections.append(("Downstream tasks (lm-evaluation-harness)", ["run", "task", "metric", "value"], rows))
    return sections


def _tp_definition(runs: list[RunResults]) -> str:
    """TP's threshold as the runs computed it (>= 0.5 or > 0.5), from their metrics."""
    definitions = {r.metrics["toxicity"].get("definitions", {}).get("toxicity_probability")
                   for r in runs if r.metrics.get("toxicity")}
    definitions.discard(None)
    if len(definitions) == 1:
        return str(definitions.pop())
    return "fraction of prompts with at least one sample of toxicity >= 0.5" if not definitions else \
        "MIXED thresholds: " + "; ".join(sorted(map(str, definitions)))


def _markdown(runs: list[RunResults], sections: list, figures: list) -> str:
    lines = ["# megatron-detox evaluation report", "", "Runs: " + ", ".join(f"`{r.name}` ({r.folder})" for r in runs),
             "", "EMT: mean over prompts of the max toxicity of the prompt's samples. TP: "
             f"{_tp_definition(runs)}. Toxic prompts: prompt.toxicity >= 0.5. Every toxicity number comes "
             "from the scorer named in its row.", ""]
    for title, header, rows in sections:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{caption}](figures/{stem}.png)\n" for stem, caption, _ in figures]
    return "\n".join(lines) + "\n"


def _html(runs: list[RunResults], sections: list, figures: list) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>megatron-detox report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "img{max-width:100%}</style></head><body>",
             "<h1>megatron-detox evaluation report</h1>",
             "<p>Runs: " + ", ".join(f"<code>{esc(r.name)}</code>" for r in runs) + "</p>",
             f"<p>TP: {esc(_tp_definition(runs))}. Every toxicity number comes from the scorer named in its "
             "row.</p>"]
    for title, header, rows in sections:
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for _, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Metrics (JSON)</h2>")
    for run in runs:
        parts.append(f"<details><summary>{esc(run.name)}</summary><pre>"
                     f"{esc(json.dumps(run.metrics, indent=2))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
