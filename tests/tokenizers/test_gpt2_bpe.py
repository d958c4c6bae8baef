"""GPT-2 vocab.json + merges.txt against transformers' GPT-2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers

from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_gpt2_bpe, load_tokenizer


@pytest.fixture(scope="module")
def gpt2_files(tiny_bpe: tokenizers.Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_bpe.model.save(str(folder))  # writes vocab.json and merges.txt
    return folder


def test_matches_transformers_gpt2(gpt2_files: Path, text_lines: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    vocab, merges = gpt2_files / "vocab.json", gpt2_files / "merges.txt"
    ours = load_gpt2_bpe(vocab, merges)
    # from_pretrained: transformers 5 silently ignores GPT2TokenizerFast(vocab_file=..., merges_file=...)
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_files))
    assert ours.eod == reference.eos_token_id == 0  # the trainer put <|endoftext|> first
    assert ours.vocab_size == len(reference) == 1000
    for line in text_lines:
        ids = ours.encode(line)
        assert ids == reference.encode(line, add_special_tokens=False), line
        assert ours.decode(ids) == line


def test_load_tokenizer_dispatches(gpt2_files: Path) -> None:
    vocab, merges = gpt2_files / "vocab.json", gpt2_files / "merges.txt"
    expected = load_gpt2_bpe(vocab, merges).encode("Homarus gammarus")
    for spec in (gpt2_files, vocab, merges, f"{vocab},{merges}"):
        assert load_tokenizer(spec).encode("Homarus gammarus") == expected


def test_missing_merges_is_user_error(gpt2_files: Path, tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.json"
    vocab.write_bytes((gpt2_files / "vocab.json").read_bytes())
    with pytest.raises(UserError, match="merges.txt"):
        load_tokenizer(vocab)


def test_garbage_vocab_is_user_error(gpt2_files: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_bytes((gpt2_files / "merges.txt").read_bytes())
    with pytest.raises(UserError, match="vocab.json"):
        load_tokenizer(tmp_path)
