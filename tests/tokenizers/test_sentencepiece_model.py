"""The sentencepiece wrapper against sentencepiece itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece

from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_sentencepiece, load_tokenizer


def test_matches_sentencepiece(tiny_sentencepiece: Path, text_lines: list[str]) -> None:
    ours = load_tokenizer(tiny_sentencepiece)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tiny_sentencepiece))
    assert (ours.vocab_size, ours.eod, ours.bos) == (600, reference.eos_id(), reference.bos_id())
    for line in text_lines:
        ids = ours.encode(line)
        assert ids == reference.encode(line), line
        assert ours.decode(ids) == line  # identity normalization + byte fallback: lossless
    assert load_tokenizer(tiny_sentencepiece.parent).encode("lobster") == ours.encode("lobster")


def test_garbage_model_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.model"
    path.write_bytes(b"\x00not a sentencepiece model")
    with pytest.raises(UserError, match="broken.model"):
        load_sentencepiece(path)
