"""Text -> sparse feature rows: hashed word and character n-grams (no vocabulary to ship).

Two ``HashingVectorizer`` blocks (word 1-2-grams, ``char_wb`` n-grams), each with
sublinear term frequency (``1 + log tf``) and its own l2 norm, side by side. Hashing
is murmurhash3 with a fixed seed, so the same text gives the same row on every
machine and sklearn version; the spec travels in ``head.json`` with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize


@dataclass(frozen=True)
class FeatureSpec:
    word_bits: int = 16
    """log2 of the word n-gram hash space."""
    char_bits: int = 17
    """log2 of the character n-gram hash space."""
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    max_chars: int = 20480
    """Texts are cut to this many characters before hashing (Perspective's 20 KiB limit)."""

    @property
    def num_features(self) -> int:
        return (1 << self.word_bits) + (1 << self.char_bits)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            word_bits=int(data["word_bits"]),
            char_bits=int(data["char_bits"]),
            word_ngrams=(int(data["word_ngrams"][0]), int(data["word_ngrams"][1])),
            char_ngrams=(int(data["char_ngrams"][0]), int(data["char_ngrams"][1])),
            max_chars=int(data["max_chars"]),
        )


def clean_text(text: str, max_chars: int) -> str:
    """Cut to ``max_chars`` and make encodable: lone surrogates become U+FFFD, NULs spaces."""
    text = text[:max_chars]
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", " ")


class Featurizer:
    """``transform(texts) -> csr_matrix [num_texts, spec.num_features]`` (float32)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        common: dict[str, Any] = {"alternate_sign": False, "norm": None, "lowercase": True, "dtype": np.float32}
        self._word = HashingVectorizer(analyzer="word", ngram_range=spec.word_ngrams,
                                       n_features=1 << spec.word_bits, token_pattern=r"(?u)\b\w+\b|[^\w\s]", **common)
        self._char = HashingVectorizer(analyzer="char_wb", ngram_range=spec.char_ngrams,
                                       n_features=1 << spec.char_bits, **common)

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        cleaned = [clean_text(text, self.spec.max_chars) for text in texts]
        blocks = []
        for vectorizer in (self._word, self._char):
            counts = vectorizer.transform(cleaned).tocsr()
            counts.data = 1.0 + np.log(counts.data)  # sublinear tf
            blocks.append(normalize(counts, norm="l2", copy=False))
        return sp.hstack(blocks, format="csr", dtype=np.float32)
