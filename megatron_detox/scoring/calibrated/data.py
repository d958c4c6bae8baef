"""Perspective-scored training data for the ``calibrated`` scorer, and its fixed split.

``load_dataset(folder)`` reads every Perspective-scored text under the shared data
folder (layout of its ``SOURCES.md``) into ``ScoredText`` rows:

* ``rtp`` -- RealToxicityPrompts records (``perspective_scored/rtp_records/*.jsonl``
  and ``rtp/decodingtrust/*.jsonl``): prompt and continuation texts, 8 attributes;
* ``wikitalk`` -- ``perspective_scored/wikitalk_cat_large/{gc,gn}.csv``: TOXICITY (~2019-20);
* ``perspective2018`` -- the 2018 official sample: 8 of its 18 columns;
* ``github`` -- ``perspective_scored/github_comments_strudel``: TOXICITY.

Split (fixed, documented in docs/scorers.md): every text belongs to a *group* --
an RTP record, keyed by its prompt text so a prompt and its continuation never
straddle the split and the same record from several repositories collapses into
one; any other comment is its own group. ``sha256(SPLIT_SALT + group) % 100``
puts a group in ``test`` (< 15), ``calibration`` (< 25) or ``train``. Every
DecodingTrust record (the SGEAT evaluation prompts) is forced into ``test``. A
text seen in several groups takes the most held-out split among them, so no
held-out text is ever trained on. Texts are deduplicated (exact match after
``strip``); the first source in ``SOURCES`` order supplies the scores.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.jsonl import iter_jsonl

ATTRIBUTES: tuple[str, ...] = (
    "toxicity",
    "severe_toxicity",
    "profanity",
    "sexually_explicit",
    "flirtation",
    "identity_attack",
    "threat",
    "insult",
)
SOURCES: tuple[str, ...] = ("rtp", "perspective2018", "wikitalk", "github")
SPLITS: tuple[str, ...] = ("train", "calibration", "test")
SPLIT_SALT = "megatron-detox/calibrated/split-v1:"
TEST_PERCENT = 15
CALIBRATION_PERCENT = 10
RESERVED_GLOB = "rtp/decodingtrust/*.jsonl"
"""SGEAT's evaluation prompts: held out (``test``), never trained on."""

# 2018 sample column -> attribute (the newest model version where two are given).
_SAMPLE_2018_COLUMNS = {
    "toxicity": "TOXICITY@6",
    "severe_toxicity": "SEVERE_TOXICITY@2",
    "profanity": "PROFANITY",
    "sexually_explicit": "SEXUALLY_EXPLICIT",
    "flirtation": "FLIRTATION",
    "identity_attack": "IDENTITY_ATTACK",
    "threat": "THREAT",
    "insult": "INSULT",
}


@dataclass
class ScoredText:
    """One unique text with its archived Perspective scores (attributes it has only)."""

    text: str
    source: str
    group: str
    scores: dict[str, float]
    split: str = "train"
    role: str = "text"
    """``prompt`` / ``continuation`` for RTP texts, else ``text``."""
    reserved: bool = False
    """True for DecodingTrust texts (SGEAT evaluation prompts and their continuations)."""


@dataclass
class RtpRecord:
    """An RTP record of the held-out side: prompt and continuation scores, by text."""

    group: str
    prompt: str
    continuation: str
    reserved_file: str | None
    """``toxic`` / ``nontoxic`` for DecodingTrust records, else None."""


@dataclass
class Dataset:
    rows: list[ScoredText]
    rtp_records: list[RtpRecord] = field(default_factory=list)

    def select(self, split: str, source: str | None = None) -> list[ScoredText]:
        return [r for r in self.rows if r.split == split and (source is None or r.source == source)]


def split_of(group: str) -> str:
    """The fixed split of a group key."""
    bucket = int(hashlib.sha256((SPLIT_SALT + group).encode("utf-8")).hexdigest(), 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + CALIBRATION_PERCENT:
        return "calibration"
    return "train"


def _scores(record: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        key = names[attribute] if names is not None else attribute
        if names is not None and key not in record:
            continue
        value = record.get(key)
        if value in (None, ""):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if 0.0 <= number <= 1.0:
            out[attribute] = number
    return out


def _iter_rtp(folder: Path) -> Iterator[tuple[ScoredText, RtpRecord | None]]:
    reserved_paths = sorted(folder.glob(RESERVED_GLOB))
    paths = reserved_paths + sorted((folder / "perspective_scored" / "rtp_records").glob("*.jsonl"))
    for path in paths:
        reserved = path in reserved_paths
        for _, record in iter_jsonl(path):
            prompt = record.get("prompt")
            if isinstance(prompt, str):  # Air-Decoding: {"prompt": text, "toxicity": x}
                prompt = {"text": prompt, "toxicity": record.get("toxicity")}
            if not isinstance(prompt, dict) or not isinstance(prompt.get("text"), str):
                continue
            group = "rtp:" + prompt["text"].strip()
            yield ScoredText(prompt["text"], "rtp", group, _scores(prompt), role="prompt", reserved=reserved), None
            continuation = record.get("continuation")
            if isinstance(continuation, dict) and isinstance(continuation.get("text"), str):
                link = RtpRecord(group, prompt["text"].strip(), continuation["text"].strip(),
                                 path.stem if reserved else None)
                row = ScoredText(continuation["text"], "rtp", group, _scores(continuation), role="continuation",
                                 reserved=reserved)
                yield row, link


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path}: file not found: is --data the shared data folder (see SOURCES.md)?")
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _iter_csv_sources(folder: Path) -> Iterator[ScoredText]:
    scored = folder / "perspective_scored"
    sample = scored / "perspectiveapi_sample" / "perspective_wikipedia_2k_score_sample_20180829.csv"
    for row in _read_csv(sample):
        yield ScoredText(row["comment_text"], "perspective2018", "p2018:" + row["id"],
                         _scores(row, _SAMPLE_2018_COLUMNS))
    for name in ("gc.csv", "gn.csv"):
        for row in _read_csv(scored / "wikitalk_cat_large" / name):
            yield ScoredText(row["text"], "wikitalk", "wikitalk:" + row["id"], _scores({"toxicity": row["api"]}))
    for row in _read_csv(scored / "github_comments_strudel" / "train_comments.csv"):
        yield ScoredText(row["text"], "github", "github:" + row["_id"],
                         _scores({"toxicity": row["perspective_score"]}))


def load_dataset(folder: str | Path) -> Dataset:
    """Every unique Perspective-scored text under ``folder`` with its fixed split."""
    folder = Path(folder).expanduser()
    if not (folder / "perspective_scored").is_dir():
        raise UserError(f"{folder}: no perspective_scored/ folder: pass the shared data folder with --data "
                        "(or set MEGATRON_DETOX_DATA)")
    rows: dict[str, ScoredText] = {}
    splits: dict[str, set[str]] = {}  # text -> splits of every group it appears in
    reserved_texts: set[str] = set()
    records: dict[str, RtpRecord] = {}

    def add(row: ScoredText) -> None:
        key = row.text.strip()
        if not key or not row.scores:
            return
        split = "test" if row.reserved else split_of(row.group)
        splits.setdefault(key, set()).add(split)
        if row.reserved:
            reserved_texts.add(key)
        if key not in rows:
            rows[key] = row
        else:  # same text from another repository: fill attributes it lacked
            for name, value in row.scores.items():
                rows[key].scores.setdefault(name, value)

    group_reserved: set[str] = set()
    for row, link in _iter_rtp(folder):
        if row.reserved:
            group_reserved.add(row.group)
        row.reserved = row.reserved or row.group in group_reserved
        add(row)
        if link is not None and (link.group not in records or (link.reserved_file and not
                                                               records[link.group].reserved_file)):
            records[link.group] = link
    for row in _iter_csv_sources(folder):
        add(row)
    order = {name: i for i, name in enumerate(SPLITS)}
    for key, row in rows.items():
        row.split = max(splits[key], key=order.__getitem__)
        row.reserved = key in reserved_texts
    held_out = [r for r in records.values() if split_of(r.group) == "test" or r.group in group_reserved]
    return Dataset(list(rows.values()), held_out)
