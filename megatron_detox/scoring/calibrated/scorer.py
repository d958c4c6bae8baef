"""``CalibratedScorer``: hashed n-gram features -> linear head -> isotonic map onto Perspective's scale.

The head ships inside the package (``megatron_detox/scoring/calibrated/head.*``,
about 3 MB), so scoring needs no data folder and no network. Texts longer than
``max_bytes`` are scored on their first ``max_bytes`` UTF-8 bytes (reported as
``truncated_bytes``, as the Perspective client does); an empty text is a
per-record error; a batch that fails as a whole is retried text by text so one
bad text cannot fail the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from megatron_detox.scoring import protocol
from megatron_detox.scoring.base import EMPTY_TEXT_ERROR, ScoreOutcome, Scorer
from megatron_detox.scoring.calibrated.features import Featurizer
from megatron_detox.scoring.calibrated.head import head_fingerprint, load_head
from megatron_detox.scoring.text import truncate_utf8

log = logging.getLogger(__name__)

PACKAGED_HEAD = Path(__file__).resolve().parent
"""Folder of the shipped ``head.safetensors`` / ``head.json``."""


class CalibratedScorer(Scorer):
    """Every attribute the head was trained on (Perspective's 8 RTP attributes)."""

    name = "calibrated"
    batch_size = 256

    def __init__(self, head: str | Path | None = None, *, max_bytes: int = protocol.DEFAULT_MAX_BYTES,
                 batch_size: int = 256) -> None:
        folder = Path(head).expanduser() if head is not None else PACKAGED_HEAD
        self._head = load_head(folder)
        self._featurizer = Featurizer(self._head.spec)
        self.attributes = self._head.attributes
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.version = f"head{self._head.meta.get('head_version', '?')}-{head_fingerprint(folder)}"

    @property
    def cache_namespace(self) -> str:
        return f"{self.name}@{self.version}/max_bytes={self.max_bytes}"

    def score_detailed(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        outcomes: list[ScoreOutcome | None] = [None] * len(texts)
        todo: list[tuple[int, str, int | None]] = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                outcomes[index] = ScoreOutcome.failure(f"not a text: {type(text).__name__}", retryable=False)
            elif not text.strip():
                outcomes[index] = ScoreOutcome.failure(EMPTY_TEXT_ERROR, retryable=False)
            else:
                cut, truncated = truncate_utf8(text, self.max_bytes)
                todo.append((index, cut, truncated))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            try:
                results = self._score([text for _, text, _ in chunk])
            except Exception:  # noqa: BLE001 (isolate the failing text below)
                log.debug("batch of %d failed; scoring its texts one by one", len(chunk), exc_info=True)
                results = [self._score_one(text) for _, text, _ in chunk]
            for (index, _, truncated), result in zip(chunk, results, strict=True):
                outcomes[index] = (ScoreOutcome.failure(result, retryable=False) if isinstance(result, str)
                                   else ScoreOutcome.success(result, truncated))
        return [outcome for outcome in outcomes if outcome is not None]

    def _score(self, texts: list[str]) -> list[dict[str, float] | str]:
        scores = self._head.predict(self._featurizer.transform(texts))  # [len(texts), num_attributes]
        return [dict(zip(self.attributes, map(float, row), strict=True)) for row in scores]

    def _score_one(self, text: str) -> dict[str, float] | str:
        try:
            return self._score([text])[0]
        except Exception as error:  # noqa: BLE001 (a per-record error, never a crashed batch)
            return f"calibrated scorer could not featurize this text ({type(error).__name__}: {error})"[:300]
