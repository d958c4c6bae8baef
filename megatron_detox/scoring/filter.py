"""The SGEAT filter: keep the least-toxic fraction of the *scored* records.

Records are ranked by ``scores[attribute]`` ascending, ties broken by input
order (earlier first), and the lowest ``floor(n_scored * keep_fraction)`` are
kept, written in input order. Records without a usable score (``score_error``,
missing attribute, non-numeric value) are never kept and never counted as
scored: their number, by reason, goes into ``filter_stats.json`` and the
summary the CLI prints.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from megatron_detox.atomic import atomic_output, write_json_atomic
from megatron_detox.errors import UserError
from megatron_detox.jsonl import iter_jsonl
from megatron_detox.scoring.records import check_distinct, dump_record

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
STATS_NAME = "filter_stats.json"


def keep_count(num_scored: int, keep_fraction: float) -> int:
    """``floor(num_scored * keep_fraction)`` computed exactly (0.29 * 100 is 29, not 28)."""
    return math.floor(Fraction(str(keep_fraction)) * num_scored)


def select_lowest(values: Sequence[float], keep_fraction: float) -> list[int]:
    """Indices of the lowest ``keep_count`` values, ties by index, returned ascending."""
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
    return sorted(ranked[: keep_count(len(values), keep_fraction)])


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, min/max and percentiles (linear interpolation) of ``values``."""
    if not values:
        return {"count": 0, "mean": None, "min": None, "max": None}
    ordered = sorted(values)
    stats: dict[str, float | int | None] = {
        "count": len(ordered),
        "mean": math.fsum(ordered) / len(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }
    for p in PERCENTILES:
        position = (len(ordered) - 1) * p / 100
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        stats[f"p{p}"] = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return stats


def _score_of(record: dict[str, Any], attribute: str) -> tuple[float | None, str | None]:
    """``(score, None)`` or ``(None, why it is unscored)``."""
    if record.get("score_error") is not None:
        return None, "score_error"
    scores = record.get("scores")
    if not isinstance(scores, dict):
        return None, "no_scores"
    if attribute not in scores:
        return None, "missing_attribute"
    value = scores[attribute]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, "non_numeric"
    return float(value), None


def filter_file(
    input_path: str | Path,
    output_path: str | Path,
    keep_fraction: float = 0.5,
    attribute: str = "toxicity",
    stats_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write the kept records and ``filter_stats.json`` (default: beside the output).

    Two passes over the input (scores first, then records), so memory holds one
    float per record, not the records. Returns the stats dict.
    """
    if not 0 < keep_fraction <= 1:
        raise UserError(f"--keep-fraction must be in (0, 1], got {keep_fraction}")
    check_distinct(input_path, output_path)
    attribute = attribute.lower()
    stats_path = Path(stats_path) if stats_path else Path(output_path).with_name(STATS_NAME)

    numbers: list[int] = []  # line number of each scored record
    values: list[float] = []
    unscored: Counter[str] = Counter()
    seen_attributes: set[str] = set()
    num_records = 0
    for number, record in iter_jsonl(input_path):
        num_records += 1
        value, reason = _score_of(record, attribute)
        if value is None:
            unscored[reason or "unknown"] += 1
            if isinstance(record.get("scores"), dict):
                seen_attributes.update(map(str, record["scores"]))
            continue
        numbers.append(number)
        values.append(value)
    if num_records and not values and unscored["missing_attribute"]:
        raise UserError(
            f"{input_path}: no record has scores.{attribute}: pass --attribute with one of "
            f"{', '.join(sorted(seen_attributes))}"
        )

    kept_indices = select_lowest(values, keep_fraction)
    kept_lines = {numbers[i] for i in kept_indices}
    kept_values = [values[i] for i in kept_indices]
    with atomic_output(output_path) as handle:
        for number, record in iter_jsonl(input_path):
            if number in kept_lines:
                handle.write(dump_record(record))

    stats: dict[str, Any] = {
        "input": str(input_path),
        "output": str(output_path),
        "attribute": attribute,
        "keep_fraction": keep_fraction,
        "num_records": num_records,
        "num_scored": len(values),
        "num_unscored": sum(unscored.values()),
        "num_unscored_by_reason": dict(sorted(unscored.items())),
        "num_kept": len(kept_indices),
        "num_dropped": len(values) - len(kept_indices),
        "threshold": max(kept_values) if kept_values else None,
        "before": describe(values),
        "after": describe(kept_values),
    }
    write_json_atomic(stats_path, stats)
    return stats
