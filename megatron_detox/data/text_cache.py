"""``data.text_files``: JSONL/text tokenized once into a cached indexed dataset.

The cache name holds a hash of the file's bytes, the JSON key and the tokenizer, so an
edited file or another tokenizer gets a fresh dataset and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from megatron_detox.data.megatron_core import IndexedDataset
from megatron_detox.data.preprocess import preprocess
from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import Tokenizer


def cached_prefix(path: Path, tokenizer: Tokenizer, json_key: str, cache_dir: Path) -> str:
    digest = hashlib.sha256()
    digest.update(f"{tokenizer.name}|{tokenizer.vocab_size}|{tokenizer.eod}|{json_key}|".encode())
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return str(cache_dir / f"{path.stem}-{digest.hexdigest()[:16]}")


def preprocess_text_files(
    files: Sequence[str], tokenizer: Tokenizer, json_key: str, cache_dir: Path, *, progress: bool = True,
    workers: int = 1,
) -> list[str]:
    """Prefixes of the indexed datasets for ``files``, tokenizing the ones not cached yet."""
    prefixes = []
    for index, name in enumerate(files):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"data.text_files[{index}]={name!r}: file not found (relative paths are "
                            "relative to the current directory)")
        prefix = cached_prefix(path, tokenizer, json_key, cache_dir)
        if not IndexedDataset.exists(prefix):
            preprocess(path, prefix, tokenizer, json_key=json_key, append_eod=True, progress=progress,
                       workers=max(workers, 1))
        prefixes.append(prefix)
    return prefixes
