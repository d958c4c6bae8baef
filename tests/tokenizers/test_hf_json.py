"""tokenizer.json against transformers' fast tokenizer, and special tokens from sibling configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers

from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_hf_tokenizer, load_tokenizer


@pytest.fixture()
def hf_folder(tiny_bpe: tokenizers.Tokenizer, tmp_path: Path) -> Path:
    tiny_bpe.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_matches_transformers_fast(hf_folder: Path, text_lines: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    file = hf_folder / "tokenizer.json"
    ours = load_hf_tokenizer(file)
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(file))
    assert ours.eod == 0 and ours.bos is None  # no configs: the <|endoftext|> fallback
    for line in text_lines:
        ids = ours.encode(line)
        assert ids == reference.encode(line, add_special_tokens=False), line
        assert ours.decode(ids) == line


def test_special_tokens_from_sibling_configs(hf_folder: Path) -> None:
    backend = tokenizers.Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
    eos, bos = 5, 6
    eos_token = backend.id_to_token(eos)
    (hf_folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": eos_token}}))
    (hf_folder / "config.json").write_text(json.dumps({"eos_token_id": [7, 8], "bos_token_id": bos}))
    tokenizer = load_tokenizer(hf_folder)
    assert (tokenizer.eod, tokenizer.bos) == (eos, bos)  # the token map wins over config.json
    (hf_folder / "special_tokens_map.json").unlink()
    assert load_tokenizer(hf_folder).eod == 7


def test_unknown_special_token_is_user_error(hf_folder: Path) -> None:
    (hf_folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</nope>"}))
    with pytest.raises(UserError, match="tokenizer_config.json"):
        load_hf_tokenizer(hf_folder)


def test_garbage_tokenizer_json_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": 42}', encoding="utf-8")
    with pytest.raises(UserError, match=str(path)):
        load_tokenizer(path)
