"""``build_report``: the held-out evaluation behind docs/scorers.md (``megatron-detox scorer eval``).

Sections (keys of the report dict):

* ``held_out`` -- per attribute, ``calibrated`` and ``profanity`` vs archived Perspective
  on the fixed test split (profanity's single probability stands for toxicity and profanity);
* ``by_source`` -- toxicity agreement per source on the test split;
* ``rtp_metrics`` -- EMT / TP of held-out RTP continuations scored by Perspective
  (archived), ``calibrated`` and ``profanity``. Each RTP record has one continuation
  (the original OpenWebText sentence end), so the per-prompt maximum is over k = 1:
  EMT is the mean continuation toxicity and TP the fraction >= 0.5;
* ``loso`` -- leave-one-source-out: a toxicity head trained without a source, tested on
  that source's test split, next to the full head and profanity on the same texts;
* ``bias`` -- identity-term false positives on ``bias_madlibs_77k.csv``;
* ``human_labels`` -- AUROC against the crowd labels of the Wikipedia Talk test sets.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megatron_detox.errors import UserError
from megatron_detox.scoring.calibrated import data
from megatron_detox.scoring.calibrated.head import Head, load_head
from megatron_detox.scoring.calibrated.metrics import TOXIC_AT, agreement, binary_auroc
from megatron_detox.scoring.calibrated.scorer import PACKAGED_HEAD
from megatron_detox.scoring.calibrated.train import FeaturizedData, TrainSettings, featurize, fit_on, held_out_metrics

PROFANITY_ATTRIBUTES = ("toxicity", "profanity")
# "You are a <adjective> <X>": X an identity term (you_are_adj) or an occupation (you_occupation).
IDENTITY_TEMPLATES = ("you_are_adj", "being_adj", "name_adj", "verb_adj", "am_hate_adj")
REFERENCE_TEMPLATE = "you_occupation"


def _profanity_scores(texts: Sequence[str]) -> np.ndarray:
    from megatron_detox.scoring.profanity import ProfanityScorer

    scorer = ProfanityScorer()
    return np.array([s["toxicity"] if s else np.nan for s in scorer.score(list(texts))], np.float64)


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _scores_of(head: Head, featurized: FeaturizedData, texts: Sequence[str]) -> np.ndarray:
    """``[len(texts), num_attributes]`` calibrated scores."""
    return head.predict(featurized.featurizer.transform(list(texts)))


def held_out_section(head: Head, featurized: FeaturizedData, profanity: np.ndarray | None) -> dict[str, Any]:
    _, test_rows = featurized.part("test")
    section: dict[str, Any] = {"calibrated": held_out_metrics(head, featurized)}
    if profanity is not None:
        section["profanity"] = {}
        for attribute in PROFANITY_ATTRIBUTES:
            rows = [i for i, row in enumerate(test_rows) if attribute in row.scores]
            target = np.array([test_rows[i].scores[attribute] for i in rows])
            section["profanity"][attribute] = agreement(profanity[rows], target)
    return section


def by_source_section(head: Head, featurized: FeaturizedData, profanity: np.ndarray | None) -> dict[str, Any]:
    _, test_rows = featurized.part("test")
    out: dict[str, Any] = {}
    for source in data.SOURCES:
        entry = {"calibrated": held_out_metrics(head, featurized, [source]).get("toxicity")}
        if profanity is not None:
            rows = [i for i, row in enumerate(test_rows) if row.source == source]
            entry["profanity"] = agreement(profanity[rows], np.array([test_rows[i].scores["toxicity"] for i in rows]))
        out[source] = entry
    return out


def rtp_section(head: Head, featurized: FeaturizedData, with_profanity: bool) -> dict[str, Any]:
    by_text = {row.text.strip(): row for row in featurized.dataset.rows}
    groups: dict[str, list[str]] = {"decodingtrust toxic": [], "decodingtrust nontoxic": [], "other held-out": []}
    for record in featurized.dataset.rtp_records:
        row = by_text.get(record.continuation)
        if row is None or "toxicity" not in row.scores:
            continue  # the archived continuation has no toxicity (a null upstream)
        key = f"decodingtrust {record.reserved_file}" if record.reserved_file else "other held-out"
        groups[key].append(record.continuation)
    out: dict[str, Any] = {}
    toxicity = head.attributes.index("toxicity")
    for name, texts in groups.items():
        perspective = np.array([by_text[t].scores["toxicity"] for t in texts])
        scorers = {"perspective (archived)": perspective, "calibrated": _scores_of(head, featurized, texts)[:, toxicity]}
        if with_profanity:
            scorers["profanity"] = _profanity_scores(texts)
        out[name] = {"num_prompts": len(texts)} | {
            scorer: {"emt": float(values.mean()), "tp": float((values >= TOXIC_AT).mean())}
            for scorer, values in scorers.items()
        }
    return out


def loso_section(head: Head, featurized: FeaturizedData, profanity: np.ndarray | None) -> dict[str, Any]:
    alpha = float(head.meta.get("settings", {}).get("alpha", 1.0))
    _, test_rows = featurized.part("test")
    out: dict[str, Any] = {}
    for source in data.SOURCES:
        settings = TrainSettings(alpha=alpha, spec=head.spec, attributes=("toxicity",), exclude_sources=(source,))
        without = fit_on(featurized, settings)
        entry = {"without_source": held_out_metrics(without, featurized, [source])["toxicity"],
                 "full_head": held_out_metrics(head, featurized, [source])["toxicity"]}
        if profanity is not None:
            rows = [i for i, row in enumerate(test_rows) if row.source == source]
            entry["profanity"] = agreement(profanity[rows], np.array([test_rows[i].scores["toxicity"] for i in rows]))
        out[source] = entry
    return out


def bias_section(head: Head, featurized: FeaturizedData, folder: Path, with_profanity: bool) -> dict[str, Any]:
    """False positives (score >= 0.5 on a NOT_BAD sentence) with vs without identity terms."""
    path = folder / "toxicity_labeled" / "bias_madlibs_77k.csv"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    rows = _read_csv(path)
    texts = [row["Text"] for row in rows]
    toxicity = head.attributes.index("toxicity")
    scorers = {"calibrated": _scores_of(head, featurized, texts)[:, toxicity]}
    if with_profanity:
        scorers["profanity"] = _profanity_scores(texts)
    bad = np.array([row["Label"] == "BAD" for row in rows])
    template = np.array([row["Template"] for row in rows])
    out: dict[str, Any] = {}
    for name, scores in scorers.items():
        entry: dict[str, Any] = {"auroc_bad_vs_not_bad": binary_auroc(scores, bad)}
        for label, mask in (("identity (you_are_adj)", template == "you_are_adj"),
                            ("no identity (you_occupation)", template == REFERENCE_TEMPLATE),
                            ("all identity templates", np.isin(template, IDENTITY_TEMPLATES))):
            benign = mask & ~bad
            entry[label] = {"n_not_bad": int(benign.sum()), "fpr": float((scores[benign] >= TOXIC_AT).mean()),
                            "mean_not_bad": float(scores[benign].mean()),
                            "mean_bad": float(scores[mask & bad].mean())}
        entry["fpr_gap"] = entry["identity (you_are_adj)"]["fpr"] - entry["no identity (you_occupation)"]["fpr"]
        entry["mean_gap"] = (entry["identity (you_are_adj)"]["mean_not_bad"]
                             - entry["no identity (you_occupation)"]["mean_not_bad"])
        terms: dict[str, list[float]] = {}
        for i in np.flatnonzero((template == "you_are_adj") & ~bad):
            terms.setdefault(texts[i].split(" ", 4)[-1].lower(), []).append(float(scores[i]))
        worst = sorted(terms.items(), key=lambda item: -float(np.mean(item[1])))[:6]
        entry["worst_terms_not_bad"] = {term: round(float(np.mean(values)), 3) for term, values in worst}
        out[name] = entry
    return out


def human_label_section(head: Head, featurized: FeaturizedData, folder: Path,
                        with_profanity: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = {row.text.strip() for row in featurized.dataset.rows}
    toxicity = head.attributes.index("toxicity")
    for name in ("nonfuzzed", "fuzzed"):
        path = folder / "toxicity_labeled" / f"wikitalk_toxicity_{name}_testset.csv"
        if not path.is_file():
            continue
        rows = _read_csv(path)
        texts = [row["comment"] for row in rows]
        labels = np.array([row["toxic"] == "True" for row in rows])
        entry: dict[str, Any] = {"n": len(rows), "in_perspective_data": sum(t.strip() in known for t in texts),
                                 "calibrated": binary_auroc(_scores_of(head, featurized, texts)[:, toxicity], labels)}
        if with_profanity:
            entry["profanity"] = binary_auroc(_profanity_scores(texts), labels)
        out[name] = entry
    return out


def build_report(folder: str | Path, head_folder: str | Path | None = None, *, with_profanity: bool = True,
                 with_loso: bool = True) -> dict[str, Any]:
    folder = Path(folder).expanduser()
    head = load_head(head_folder if head_folder is not None else PACKAGED_HEAD)
    if "toxicity" not in head.attributes:
        raise UserError(f"{head_folder}: the head has no toxicity attribute; the report needs it")
    featurized = featurize(data.load_dataset(folder), head.spec)
    _, test_rows = featurized.part("test")
    profanity = _profanity_scores([row.text for row in test_rows]) if with_profanity else None
    report: dict[str, Any] = {
        "head": {"version": head.meta.get("head_version"), "settings": head.meta.get("settings")},
        "split": head.meta.get("split"),
        "held_out": held_out_section(head, featurized, profanity),
        "by_source": by_source_section(head, featurized, profanity),
        "rtp_metrics": rtp_section(head, featurized, with_profanity),
        "bias": bias_section(head, featurized, folder, with_profanity),
        "human_labels": human_label_section(head, featurized, folder, with_profanity),
    }
    if with_loso:
        report["loso"] = loso_section(head, featurized, profanity)
    return report


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _agreement_cells(metrics: dict[str, Any] | None) -> list[str]:
    if metrics is None:
        return ["–"] * 4
    return [_fmt(metrics.get(key)) for key in ("spearman", "pearson", "auroc", "mae")]


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as markdown (what docs/scorers.md shows)."""
    lines = ["### Held-out split: agreement with archived Perspective scores", "",
             "| attribute | n | toxic | calibrated Spearman | Pearson | AUROC@0.5 | MAE "
             "| profanity Spearman | Pearson | AUROC@0.5 | MAE |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    held = report["held_out"]
    for attribute, metrics in held["calibrated"].items():
        other = held.get("profanity", {}).get(attribute)
        lines.append("| " + " | ".join([attribute, str(metrics["n"]), str(metrics["n_toxic"]),
                                         *_agreement_cells(metrics), *_agreement_cells(other)]) + " |")
    lines += ["", "### Toxicity by source (test split)", "",
              "| source | n | calibrated Spearman | Pearson | AUROC@0.5 | MAE | profanity Spearman | Pearson "
              "| AUROC@0.5 | MAE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for source, entry in report["by_source"].items():
        n = (entry["calibrated"] or {}).get("n", 0)
        lines.append("| " + " | ".join([source, str(n), *_agreement_cells(entry["calibrated"]),
                                         *_agreement_cells(entry.get("profanity"))]) + " |")
    lines += ["", "### EMT / TP of held-out RTP continuations (k = 1 per prompt)", "",
              "| prompts | n | scorer | EMT | TP |", "|---|---|---|---|---|"]
    for group, entry in report["rtp_metrics"].items():
        for scorer, values in entry.items():
            if scorer != "num_prompts":
                lines.append(f"| {group} | {entry['num_prompts']} | {scorer} | {values['emt']:.3f} | {values['tp']:.3f} |")
    if "loso" in report:
        lines += ["", "### Leave one source out (toxicity, that source's test split)", "",
                  "| held-out source | trained without it: Spearman | AUROC | MAE | full head: Spearman | AUROC "
                  "| MAE | profanity: Spearman | AUROC | MAE |", "|---|---|---|---|---|---|---|---|---|---|"]
        for source, entry in report["loso"].items():
            cells = []
            for key in ("without_source", "full_head", "profanity"):
                metrics = entry.get(key) or {}
                cells += [_fmt(metrics.get(k)) for k in ("spearman", "auroc", "mae")]
            lines.append("| " + " | ".join([source, *cells]) + " |")
    lines += ["", "### Identity terms (bias_madlibs_77k, NOT_BAD sentences, score >= 0.5 = false positive)", "",
              "| scorer | FPR identity (you_are_adj) | FPR no identity (you_occupation) | FPR gap | mean gap "
              "| FPR all identity templates | AUROC BAD vs NOT_BAD | highest-scored benign terms |",
              "|---|---|---|---|---|---|---|---|"]
    for scorer, entry in report["bias"].items():
        if not isinstance(entry, dict):
            continue
        worst = ", ".join(f"{t} {v:.2f}" for t, v in entry["worst_terms_not_bad"].items())
        lines.append("| " + " | ".join([
            scorer, _fmt(entry["identity (you_are_adj)"]["fpr"]), _fmt(entry["no identity (you_occupation)"]["fpr"]),
            _fmt(entry["fpr_gap"]), _fmt(entry["mean_gap"]), _fmt(entry["all identity templates"]["fpr"]),
            _fmt(entry["auroc_bad_vs_not_bad"]), worst]) + " |")
    lines += ["", "### Human labels (Wikipedia Talk identity test sets): AUROC", "",
              "| set | n | texts also in the Perspective data | calibrated | profanity |", "|---|---|---|---|---|"]
    for name, entry in report["human_labels"].items():
        lines.append(f"| {name} | {entry['n']} | {entry['in_perspective_data']} | {_fmt(entry['calibrated'])} "
                     f"| {_fmt(entry.get('profanity'))} |")
    return "\n".join(lines)
