"""load_tokenizer's dispatch on the embedded GGUF, and its errors for bad paths."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_tokenizer


def test_gguf_file_folder_and_magic(tmp_path: Path) -> None:
    """A tiny byte-level GGUF: found as a file, in a folder, and by magic without suffix."""
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(["<|endoftext|>", "a", "b", "ab"])
    writer.add_token_types([gguf.TokenType.CONTROL, *[gguf.TokenType.NORMAL] * 3])
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    renamed = tmp_path / "model.bin"
    for spec in (path, tmp_path):
        tokenizer = load_tokenizer(spec)
        assert (tokenizer.eod, tokenizer.bos, tokenizer.vocab_size) == (0, None, 4)
        assert tokenizer.encode("abba<|endoftext|>") == [3, 2, 1, 0]
    path.rename(renamed)
    assert load_tokenizer(renamed).encode("ab") == [3]


@pytest.mark.parametrize("name", ["nope.gguf", "tokenizer.json", "tok.model", "missing_folder/"])
def test_missing_path_is_user_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(UserError, match=str(path.name)):
        load_tokenizer(path)


def test_unknown_kind_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="weights.bin"):
        load_tokenizer(path)
    with pytest.raises(UserError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        load_tokenizer(tmp_path / "x.gguf")
    assert "\n" not in str(caught.value)
