"""The ``Scorer`` interface and the per-text outcome every scorer returns.

A scorer maps a batch of texts to one outcome per text, in order. An outcome is
either a score dict (lower-case attribute name -> probability in [0, 1]) or an
error with a reason; a failed text is never given a placeholder score (no -1,
no 0). ``retryable`` errors (quota, server faults, timeouts) are not cached, so
the next run tries them again; non-retryable ones (a 400 for that text) are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

# The paper's Perspective attribute set (Wang et al. 2022, following Gehman et al. 2020).
DEFAULT_ATTRIBUTES: tuple[str, ...] = (
    "toxicity",
    "severe_toxicity",
    "sexually_explicit",
    "threat",
    "profanity",
    "identity_attack",
)

EMPTY_TEXT_ERROR = "empty text: nothing to score"


@dataclass(frozen=True)
class ScoreOutcome:
    """The result of scoring one text.

    Exactly one of ``scores`` and ``error`` is set. ``truncated_bytes`` is the
    UTF-8 length of the prefix that was actually scored when the text had to be
    shortened (``None`` when the whole text was scored).
    """

    scores: dict[str, float] | None = None
    error: str | None = None
    retryable: bool = False
    truncated_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.error is None):
            raise ValueError("a ScoreOutcome holds either scores or an error")

    @property
    def ok(self) -> bool:
        return self.scores is not None

    @classmethod
    def success(cls, scores: dict[str, float], truncated_bytes: int | None = None) -> ScoreOutcome:
        return cls(scores=dict(scores), truncated_bytes=truncated_bytes)

    @classmethod
    def failure(cls, reason: str, *, retryable: bool) -> ScoreOutcome:
        return cls(error=reason, retryable=retryable)


class Closing:
    """``with obj:`` calls ``obj.close()`` on the way out (scorers, the cache, the local server)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Scorer(Closing, ABC):
    """Scores batches of texts; subclasses set ``name``, ``version`` and ``attributes``.

    ``batch_size`` is how many texts the pipeline hands to one ``score_detailed``
    call; the pipeline may run several calls at once on worker threads, so
    implementations must be thread-safe (share state only behind locks).
    """

    name: str = "scorer"
    version: str = "0"
    attributes: tuple[str, ...] = ()
    batch_size: int = 1

    @property
    def cache_namespace(self) -> str:
        """Key under which the cache stores this scorer's results.

        Everything that changes a score must be part of it (model version,
        endpoint, languages, truncation limit); attributes are keyed separately.
        """
        return f"{self.name}@{self.version}"

    @property
    def info(self) -> dict[str, str]:
        """``{"name", "version"}``, recorded in every output record."""
        return {"name": self.name, "version": self.version}

    @abstractmethod
    def score_detailed(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        """One ``ScoreOutcome`` per text, in order."""

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        """Scores per text (lower-case attribute -> float), ``None`` where it failed."""
        return [outcome.scores for outcome in self.score_detailed(texts)]

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release connections or models; the default does nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"
