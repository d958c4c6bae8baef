"""``load_tokenizer``: pick the loader from what a path is."""

from __future__ import annotations

from pathlib import Path

from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import Tokenizer
from megatron_detox.tokenizers.gguf_vocab import load_gguf_tokenizer
from megatron_detox.tokenizers.gpt2_bpe import load_gpt2_bpe
from megatron_detox.tokenizers.hf_json import load_hf_tokenizer
from megatron_detox.tokenizers.sentencepiece_model import load_sentencepiece

_GGUF_MAGIC = b"GGUF"
_EXPECTED = (
    "a .gguf file, a tokenizer.json, a sentencepiece .model, 'VOCAB.json,MERGES.txt', "
    "or a folder holding tokenizer.json, vocab.json+merges.txt or tokenizer.model"
)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """Load the tokenizer ``spec`` points at.

    ``spec`` is one of: a ``.gguf`` file (its embedded tokenizer); ``tokenizer.json``;
    a sentencepiece ``.model``; ``vocab.json`` (with ``merges.txt`` beside it) or the
    pair ``"VOCAB.json,MERGES.txt"``; or a folder holding one of those.
    """
    if isinstance(spec, str) and "," in spec and not Path(spec).exists():
        vocab, _, merges = spec.partition(",")
        return load_gpt2_bpe(vocab.strip(), merges.strip())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found; pass {_EXPECTED}")
    if path.suffix == ".gguf" or _has_gguf_magic(path):
        return load_gguf_tokenizer(path)
    if path.name == "vocab.json" or path.suffix == ".txt":
        return load_gpt2_bpe(path.with_name("vocab.json"), path.with_name("merges.txt"))
    if path.suffix == ".json":
        return load_hf_tokenizer(path)
    if path.suffix == ".model":
        return load_sentencepiece(path)
    raise UserError(f"{path}: unknown tokenizer file type; pass {_EXPECTED}")


def _load_folder(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return load_hf_tokenizer(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return load_gpt2_bpe(folder / "vocab.json", folder / "merges.txt")
    if (folder / "tokenizer.model").is_file():
        return load_sentencepiece(folder / "tokenizer.model")
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_gguf_tokenizer(ggufs[0])
    raise UserError(f"{folder}: no tokenizer files found (or several .gguf files); pass {_EXPECTED}")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _GGUF_MAGIC
    except OSError as error:
        raise UserError(f"{path}: cannot read the tokenizer file ({error.strerror}); check its permissions") from error
