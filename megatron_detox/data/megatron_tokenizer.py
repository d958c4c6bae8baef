"""Our ``Tokenizer`` behind megatron-core's tokenizer interface.

megatron-core's ``GPTDataset`` only reads ``vocab_size``, ``eod`` (for masks) and
``pad`` from the tokenizer, and hashes ``unique_identifiers`` into the names of its
cached index files; no online tokenization happens in the training path.
"""

from __future__ import annotations

from typing import Any

import numpy
from megatron.core.tokenizers import MegatronTokenizerBase

from megatron_detox.tokenizers.base import Tokenizer


class MegatronTokenizer(MegatronTokenizerBase):
    """Adapter from :class:`megatron_detox.tokenizers.base.Tokenizer`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer.name, {})
        self._tokenizer = tokenizer
        # Part of the cache key of GPTDataset's index files (json.dumps default hook).
        self.unique_identifiers: dict[str, Any] = {
            "class": type(self).__name__,
            "name": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eod": tokenizer.eod,
        }

    def tokenize(self, text: str) -> list[int]:  # type: ignore[override]
        return self._tokenizer.encode(text)

    def detokenize(self, ids: numpy.ndarray | list[int]) -> str:  # type: ignore[override]
        return self._tokenizer.decode([int(i) for i in ids])

    @property
    def vocab(self) -> dict[str, int]:  # type: ignore[override]
        raise NotImplementedError("the vocabulary mapping is not needed for pretokenized data")

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return self._tokenizer.vocab_size

    @property
    def eod(self) -> int:
        return self._tokenizer.eod

    def apply_chat_template(self) -> None:  # type: ignore[override]
        raise NotImplementedError("chat templates are not used in pretraining data")
