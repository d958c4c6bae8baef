"""Offline scorer: the ``alt-profanity-check`` linear model (the no-key default)."""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Sequence
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.scoring.base import ScoreOutcome, Scorer


class ProfanityScorer(Scorer):
    """``alt-profanity-check`` probabilities.

    The model has one output, the probability that a text is offensive. It is
    reported as ``profanity`` and also as ``toxicity`` so the filter and the
    toxicity metrics (which read ``toxicity``) work offline unchanged; it is a
    cruder signal than Perspective's TOXICITY and the ``scorer`` field in each
    record says which one produced a score.
    """

    name = "profanity"
    attributes = ("toxicity", "profanity")
    batch_size = 256

    def __init__(self, batch_size: int = 256) -> None:
        try:
            import profanity_check  # loads the pickled model (~1 s)
        except ImportError:
            raise UserError(
                "the profanity scorer needs alt-profanity-check: pip install 'megatron-detox[scoring]'"
            ) from None
        self._model: Any = profanity_check
        self.batch_size = batch_size
        self.version = "alt-profanity-check-" + importlib.metadata.version("alt-profanity-check")
        self._lock = threading.Lock()  # sklearn estimators are not documented thread-safe

    def score_detailed(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        if not texts:
            return []
        with self._lock:
            probabilities = self._model.predict_prob(list(texts))
        return [ScoreOutcome.success({"toxicity": float(p), "profanity": float(p)}) for p in probabilities]
