"""A sentencepiece ``.model`` file behind the ``Tokenizer`` interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece

from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import first_line, require_file


@dataclass
class SentencePieceTokenizer:
    """Sentencepiece encode/decode; ``encode`` adds no BOS/EOS."""

    name: str
    processor: sentencepiece.SentencePieceProcessor
    eod: int = field(init=False)
    bos: int | None = field(init=False)
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.vocab_size = int(self.processor.get_piece_size())
        # sentencepiece reports a disabled special token as -1
        self.eod = int(self.processor.eos_id())
        bos = int(self.processor.bos_id())
        self.bos = bos if bos >= 0 else None

    def encode(self, text: str) -> list[int]:
        return list(self.processor.encode(text, out_type=int))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.processor.decode(list(ids)))


def load_sentencepiece(path: str | Path) -> SentencePieceTokenizer:
    """Load a sentencepiece model; it must define an EOS piece (used as ``eod``)."""
    path = require_file(Path(path), "sentencepiece .model file")
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except Exception as error:  # OSError / RuntimeError from the C++ parser
        raise UserError(f"{path}: not a valid sentencepiece model ({first_line(error)}); pass a .model file") from error
    if processor.eos_id() < 0:
        raise UserError(f"{path}: sentencepiece model has no EOS piece; retrain it with eos_id set")
    return SentencePieceTokenizer(name=f"sentencepiece:{path.stem}", processor=processor)
