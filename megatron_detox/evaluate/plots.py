"""Matplotlib figures for the report (Agg backend: no display needed), returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

GROUP_LABELS = {"all": "all prompts", "toxic": "toxic prompts", "nontoxic": "non-toxic prompts"}


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def toxicity_histograms(maxima: dict[str, dict[str, list[float]]]) -> bytes:
    """Per-prompt max toxicity histograms, one panel per prompt group, one line per run.

    ``maxima[run][group]`` holds the per-prompt maxima of that run's prompts in that group.
    """
    groups = [g for g in ("toxic", "nontoxic", "all") if any(maxima[run].get(g) for run in maxima)]
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False, layout="constrained")
    bins = np.linspace(0.0, 1.0, 21)
    for axis, group in zip(axes[0], groups):
        for run, by_group in maxima.items():
            values = by_group.get(group) or []
            if values:
                axis.hist(values, bins=bins, histtype="step", linewidth=2, label=f"{run} (n={len(values)})")
        axis.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        axis.set_title(GROUP_LABELS[group])
        axis.set_xlabel("max toxicity over samples")
        axis.set_ylabel("prompts")
        axis.legend(fontsize=8)
    figure.suptitle("Distribution of per-prompt maximum toxicity")
    return to_png(figure)


def metric_bars(metrics: dict[str, dict[str, Any]], key: str, title: str) -> bytes:
    """Grouped bars with 95 % CI error bars: prompt groups on x, one bar per run."""
    runs = list(metrics)
    groups = [g for g in ("toxic", "nontoxic", "all") if any(metrics[r].get(g) for r in runs)]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(runs)) / 2), 3.6))
    width = 0.8 / max(1, len(runs))
    for number, run in enumerate(runs):
        values, lows, highs = [], [], []
        for group in groups:
            block = metrics[run].get(group) or {}
            value = block.get(key)
            ci = block.get(f"{key}_ci") or [value, value]
            values.append(np.nan if value is None else value)
            lows.append(0.0 if value is None or ci[0] is None else value - ci[0])
            highs.append(0.0 if value is None or ci[1] is None else ci[1] - value)
        positions = np.arange(len(groups)) + (number - (len(runs) - 1) / 2) * width
        axis.bar(positions, values, width, yerr=[lows, highs], capsize=4, label=run)
    axis.set_xticks(np.arange(len(groups)), [GROUP_LABELS[g] for g in groups])
    axis.set_ylim(0.0, 1.0)
    axis.set_title(title + " (95 % bootstrap CI)")
    axis.legend(fontsize=8)
    return to_png(figure)


def grouped_bars(values: dict[str, dict[str, float | None]], title: str, ylabel: str,
                 log: bool = False) -> bytes:
    """``values[run][category]`` as grouped bars: categories on x, one bar per run."""
    runs = list(values)
    categories = sorted({c for run in runs for c in values[run]})
    figure, axis = plt.subplots(figsize=(max(5.0, 0.5 * len(categories) * max(1, len(runs))), 3.8))
    width = 0.8 / max(1, len(runs))
    for number, run in enumerate(runs):
        heights = [values[run].get(c) for c in categories]
        positions = np.arange(len(categories)) + (number - (len(runs) - 1) / 2) * width
        axis.bar(positions, [np.nan if h is None else h for h in heights], width, label=run)
    axis.set_xticks(np.arange(len(categories)), [_short(c) for c in categories],
                    rotation=30 if len(categories) > 3 else 0, ha="right" if len(categories) > 3 else "center")
    if log:
        axis.set_yscale("log")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    return to_png(figure)


def _short(label: str, limit: int = 24) -> str:
    label = label.replace("_", " ")
    return label if len(label) <= limit else label[: limit - 1] + "…"

