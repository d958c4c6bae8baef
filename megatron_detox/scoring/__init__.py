"""Toxicity scoring: Perspective API client, offline scorers, cache, filter, local server.

Public API (what the evaluation and SGEAT stages call)::

    from megatron_detox.scoring import build_scorer, ScoreCache, score_file, score_records

    scorer = build_scorer("perspective", qps=1.0)        # or "calibrated", "profanity", "hf-classifier"
    scorer.score(["some text"])                         # -> [{"toxicity": 0.02, ...} | None]
    with ScoreCache("scores.sqlite") as cache:
        summary = score_file("gen.jsonl", "gen.scored.jsonl", scorer, cache, text_key="text")
        for record in score_records(records, scorer, cache, text_key="continuation.text"):
            record["scores"]["toxicity"]                  # or record["score_error"]
    filter_file("gen.scored.jsonl", "gen.kept.jsonl", keep_fraction=0.5)

* ``Scorer`` -- ``name``, ``version``, ``attributes``, ``batch_size``,
  ``score(texts) -> list[dict[str, float] | None]`` and
  ``score_detailed(texts) -> list[ScoreOutcome]`` (with error reasons).
* ``build_scorer(name=None, **options) -> Scorer`` -- ``None`` picks Perspective
  when ``PERSPECTIVE_API_KEY`` (or ``api_key_file``) is set, else ``calibrated``
  (the offline scorer fitted to archived Perspective scores, docs/scorers.md).
* ``ScoreCache(path | None)`` -- SQLite, keyed by (scorer, attributes, sha256(text)).
* ``score_records(records, scorer, cache=None, text_key="text", *, workers=1) -> Iterator[dict]``
  and ``score_file(input, output, scorer, cache=None, text_key="text", *, workers=1)
  -> ScoreSummary`` -- in order, exactly once per distinct text, resumable.
* ``filter_file(input, output, keep_fraction=0.5, attribute="toxicity") -> dict``.
* ``serve_in_thread(scorer, port=0, settings=ServerSettings(...), log_path=...)``
  -- the local Perspective-compatible server.

Output records gain ``scorer`` ({name, version}) and either ``scores``
(lower-case attribute -> float, plus ``truncated_bytes`` when the text was cut)
or ``score_error`` (reason). Heavy dependencies load only when a scorer needs them.
"""

from __future__ import annotations

from megatron_detox.scoring.apikey import ApiKey, load_api_key
from megatron_detox.scoring.base import DEFAULT_ATTRIBUTES, ScoreOutcome, Scorer
from megatron_detox.scoring.cache import ScoreCache
from megatron_detox.scoring.faults import FaultConfig
from megatron_detox.scoring.filter import filter_file, select_lowest
from megatron_detox.scoring.pipeline import ScoreSummary, score_file, score_records
from megatron_detox.scoring.registry import SCORER_NAMES, build_scorer
from megatron_detox.scoring.server import ServerSettings, build_server, serve_in_thread

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "SCORER_NAMES",
    "ApiKey",
    "FaultConfig",
    "ScoreCache",
    "ScoreOutcome",
    "ScoreSummary",
    "Scorer",
    "ServerSettings",
    "build_scorer",
    "build_server",
    "filter_file",
    "load_api_key",
    "score_file",
    "score_records",
    "select_lowest",
    "serve_in_thread",
]
