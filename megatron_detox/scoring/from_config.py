"""The scorer a config's ``score`` section names (``sgeat run``'s score and evaluate stages)."""

from __future__ import annotations

from typing import Any

from megatron_detox.config import ScoreConfig
from megatron_detox.scoring.base import Scorer
from megatron_detox.scoring.registry import build_scorer


def scorer_from_config(score: ScoreConfig) -> Scorer:
    """``build_scorer`` with every ``score.*`` field; ``scorer: auto`` lets the registry pick its default."""
    options: dict[str, Any] = {"attributes": tuple(score.attributes), "qps": score.qps, "workers": score.workers,
                               "api_key_file": score.api_key_file, "hf_model": score.hf_classifier_path}
    if score.perspective_url:
        options["perspective_url"] = score.perspective_url
    return build_scorer(None if score.scorer == "auto" else score.scorer, **options)
