"""The one tokenizer interface, and its wrapper around a HF ``tokenizers.Tokenizer``.

Everything downstream (preprocess, generate, evaluate) sees only ``Tokenizer``:
``encode`` never adds special tokens: the caller appends ``eod`` where a document
ends, as Megatron's preprocessing does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import tokenizers

from megatron_detox.errors import UserError


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, plus the ids of the special tokens the pipeline needs."""

    name: str
    vocab_size: int
    """Real vocabulary size, special tokens included, before Megatron's padding."""
    eod: int
    """End-of-document / EOS id: appended after each document, stops generation."""
    bos: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens are added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``.

        Special tokens are not skipped where the backend can spell them (HF
        ``tokenizers``); sentencepiece renders control pieces such as ``</s>`` as "".
        """
        ...


@dataclass
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (BPE, byte-level BPE, ...) behind our interface."""

    name: str
    backend: tokenizers.Tokenizer
    eod: int
    bos: int | None = None
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.vocab_size = int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=False))


def token_id(backend: tokenizers.Tokenizer, token: str | None, source: Path) -> int | None:
    """The id of ``token`` in ``backend``; ``None`` if ``token`` is ``None``.

    A named special token that is not in the vocabulary is a broken file set, so it is
    reported rather than silently dropped.
    """
    if token is None:
        return None
    index = backend.token_to_id(token)
    if index is None:
        raise UserError(
            f"{source}: special token {token!r} is not in the vocabulary; fix the tokenizer files so they agree"
        )
    return int(index)


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is an existing file, else a ``UserError`` saying what was expected."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; check the tokenizer path")
    return path


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line, for one-line user errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
