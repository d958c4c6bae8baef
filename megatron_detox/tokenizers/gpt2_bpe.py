"""GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt`` (Megatron's GPT2BPETokenizer)."""

from __future__ import annotations

from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, pre_tokenizers

from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import HFTokenizer, first_line, require_file

EOD_TOKEN = "<|endoftext|>"
"""GPT-2's only special token: end of document (id 50256 in the real files)."""


def load_gpt2_bpe(vocab_file: str | Path, merges_file: str | Path) -> HFTokenizer:
    """Byte-level BPE as GPT-2 (and Megatron) uses it; ``eod`` is ``<|endoftext|>``."""
    vocab_path = require_file(Path(vocab_file), "GPT-2 vocab.json")
    merges_path = require_file(Path(merges_file), "GPT-2 merges.txt")
    try:
        model = tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path))
    except Exception as error:  # the Rust reader raises a bare Exception
        raise UserError(
            f"{vocab_path}: cannot read GPT-2 BPE files with {merges_path.name} ({first_line(error)}); "
            "pass a valid vocab.json and merges.txt pair"
        ) from error
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eod = backend.token_to_id(EOD_TOKEN)
    if eod is None:
        raise UserError(f"{vocab_path}: GPT-2 vocabulary has no {EOD_TOKEN!r} token; pass the matching vocab.json")
    # As in GPT2TokenizerFast: the literal text "<|endoftext|>" encodes to the one id.
    backend.add_special_tokens([AddedToken(EOD_TOKEN, normalized=False, special=True)])
    return HFTokenizer(name=f"gpt2-bpe:{vocab_path.parent.name}", backend=backend, eod=int(eod), bos=None)
