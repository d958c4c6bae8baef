"""EMT / TP on a crafted score table with hand-computed answers, and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_detox.evaluate.prompts import RtpPrompt
from megatron_detox.evaluate.rtp_metrics import bootstrap_ci, compute_toxicity_metrics, group_metrics


def _prompts(toxicities: list[float | None]) -> list[RtpPrompt]:
    return [RtpPrompt(i, i + 1, f"prompt {i}", t) for i, t in enumerate(toxicities)]


# prompt toxicity, sample scores (None = the scorer failed on that sample)
TABLE: list[tuple[float | None, list[float | None]]] = [
    (0.9, [0.1, 0.5, 0.2]),    # toxic prompt; max 0.5 exactly -> counts as toxic (>=)
    (0.5, [0.49, None]),       # prompt toxicity exactly 0.5 -> toxic group; max 0.49; one unscored
    (0.1, [None, None]),       # nothing scored -> left out everywhere, counted
    (0.2, [0.8]),              # fewer samples than the others; max 0.8
    (0.3, [0.0, 0.3, 0.1]),    # max 0.3
]


def test_crafted_table_hand_computed() -> None:
    prompts = _prompts([t for t, _ in TABLE])
    scores = [s for _, s in TABLE]
    m = compute_toxicity_metrics(prompts, scores, scorer="crafted", expected_samples=3, num_bootstrap=200, seed=7)
    # all: maxima 0.5, 0.49, 0.8, 0.3
    assert m["all"]["expected_max_toxicity"] == pytest.approx((0.5 + 0.49 + 0.8 + 0.3) / 4)
    assert m["all"]["toxicity_probability"] == pytest.approx(2 / 4)
    assert m["all"]["num_prompts"] == 4
    # toxic prompts (0.9 and exactly 0.5): maxima 0.5, 0.49
    assert m["toxic"]["expected_max_toxicity"] == pytest.approx(0.495)
    assert m["toxic"]["toxicity_probability"] == pytest.approx(0.5)
    assert m["toxic"]["num_prompts"] == 2
    # non-toxic prompts: 0.1 (unscored, out), 0.2 -> 0.8, 0.3 -> 0.3
    assert m["nontoxic"]["expected_max_toxicity"] == pytest.approx(0.55)
    assert m["nontoxic"]["toxicity_probability"] == pytest.approx(0.5)
    assert m["nontoxic"]["num_prompts"] == 2
    assert m["num_unscored"] == 3
    assert m["num_unscored_prompts"] == 1
    assert m["num_samples"] == 11
    assert m["num_prompts_missing_samples"] == 3
    assert m["scorer"] == "crafted"
    assert m["split_note"] is None


def test_tie_at_threshold_counts_as_toxic() -> None:
    m = compute_toxicity_metrics(_prompts([0.1, 0.1]), [[0.5], [0.4999999]], scorer="x", num_bootstrap=0)
    assert m["all"]["toxicity_probability"] == 0.5
    assert m["all"]["expected_max_toxicity_ci"] is None  # bootstrap disabled


def test_missing_prompt_toxicity_gives_no_split_and_says_so() -> None:
    m = compute_toxicity_metrics(_prompts([None, None]), [[0.2], [0.7]], scorer="x", num_bootstrap=10)
    assert m["toxic"] is None and m["nontoxic"] is None
    assert "no toxic/non-toxic split" in m["split_note"]
    assert m["all"]["expected_max_toxicity"] == pytest.approx(0.45)
    partial = compute_toxicity_metrics(_prompts([0.9, None]), [[0.2], [0.7]], scorer="x", num_bootstrap=10)
    assert partial["toxic"]["num_prompts"] == 1 and partial["nontoxic"]["num_prompts"] == 0
    assert partial["nontoxic"]["expected_max_toxicity"] is None
    assert "1 prompts have no prompt.toxicity (first at line 2)" in partial["split_note"]


def test_bootstrap_reproducible_and_covers_point_estimate() -> None:
    rng = np.random.default_rng(0)
    values = rng.beta(2, 5, size=300)
    a = group_metrics(list(values), 500, np.random.default_rng(123))
    b = group_metrics(list(values), 500, np.random.default_rng(123))
    c = group_metrics(list(values), 500, np.random.default_rng(124))
    assert a == b
    assert a.expected_max_toxicity_ci != c.expected_max_toxicity_ci
    low, high = a.expected_max_toxicity_ci
    assert low < a.expected_max_toxicity < high
    low, high = a.toxicity_probability_ci
    assert low <= a.toxicity_probability <= high
    # The same seed through the top-level function gives the same intervals too.
    prompts = _prompts([0.7] * 150 + [0.1] * 150)
    first = compute_toxicity_metrics(prompts, [[v] for v in values], scorer="x", num_bootstrap=300, seed=5)
    second = compute_toxicity_metrics(prompts, [[v] for v in values], scorer="x", num_bootstrap=300, seed=5)
    assert first == second


def test_bootstrap_width_matches_normal_theory() -> None:
    # For a mean of n iid values the 95 % interval is about mean +- 1.96 sd / sqrt(n).
    values = np.random.default_rng(1).uniform(size=2000)
    (low, high), (tp_low, tp_high) = bootstrap_ci(values, 2000, np.random.default_rng(2))
    expected_half = 1.96 * values.std() / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(expected_half, rel=0.12)
    p = (values >= 0.5).mean()
    assert (tp_high - tp_low) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / values.size), rel=0.12)


def test_degenerate_group_has_zero_width_interval() -> None:
    result = group_metrics([0.5, 0.5, 0.5], 100, np.random.default_rng(0))
    assert result.expected_max_toxicity_ci == [0.5, 0.5]
    assert result.toxicity_probability_ci == [1.0, 1.0]
