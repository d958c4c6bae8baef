"""``sgeat compare RUN_DIR [RUN_DIR ...]``: several runs' detoxified models against their common base.

The runs must have evaluated the same base model the same way (equal ``evaluate/base``
keys), e.g. SGEAT and the DAPT baseline from one config. The first table is every model's
EMT/TP with 95 % CIs and perplexity; the second the paired changes: each run against the
base and, for two runs, the first against the second (same prompts resampled for both).
"""

from __future__ import annotations

from pathlib import Path

from megatron_detox.errors import UserError
from megatron_detox.jsonl import read_json
from megatron_detox.sgeat.evaluation import KEY_FILE
from megatron_detox.sgeat.manifest import read_manifest, require_run_dir
from megatron_detox.sgeat.report import _ci, paired_delta, summary_table


def _evaluated(run: Path, name: str) -> Path:
    folder = run / "evaluate" / name
    if not (folder / "metrics.json").is_file() or not (folder / "per_prompt.jsonl").is_file():
        raise UserError(f"{run}: no finished evaluate/{name}; run its evaluate stage first")
    return folder


def _label(run: Path) -> str:
    mode = read_manifest(run).get("config", {}).get("sgeat", {}).get("mode", "?")
    return f"{run.name} ({mode})"


def compare_table(runs: list[Path], num_bootstrap: int | None = None, seed: int | None = None) -> str:
    """None: the runs' own ``eval.bootstrap_samples`` / ``eval.bootstrap_seed`` (equal, as their bases are)."""
    for run in runs:
        require_run_dir(run)
    base = _evaluated(runs[0], "base")
    marker = read_json(base / KEY_FILE)
    base_key = marker.get("key")
    evaluated_with = marker.get("settings", {}).get("eval", {})
    num_bootstrap = evaluated_with.get("bootstrap_samples", 1000) if num_bootstrap is None else num_bootstrap
    seed = evaluated_with.get("bootstrap_seed", 0) if seed is None else seed
    for run in runs[1:]:
        other = _evaluated(run, "base")
        if read_json(other / KEY_FILE).get("key") != base_key:
            raise UserError(f"{run}: its base model was evaluated differently from {runs[0]}'s "
                            "(model, prompts, eval or score settings differ); compare runs of one eval setup")
    detox = [_evaluated(run, "detox") for run in runs]
    labels = ["base", *(_label(run) for run in runs)]
    lines = [summary_table([base, *detox], num_bootstrap, seed, labels), "",
             "| paired EMT change [95% CI] | toxic prompts | non-toxic prompts |", "|---|---|---|"]
    pairs = [(f"{label} - base", base, folder) for label, folder in zip(labels[1:], detox, strict=True)]
    if len(runs) == 2:
        pairs.append((f"{labels[1]} - {labels[2]}", detox[1], detox[0]))
    for name, before, after in pairs:
        cells = []
        for toxic in (True, False):
            delta = paired_delta(before, after, toxic, num_bootstrap, seed)
            cells.append(_ci(delta[0], delta[1]) if delta else "–")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
