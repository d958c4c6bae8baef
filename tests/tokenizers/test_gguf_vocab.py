"""The GGUF-embedded tokenizer against transformers' GGUF converter and sentencepiece."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import sentencepiece

from megatron_detox.errors import UserError
from megatron_detox.tokenizers import Tokenizer, load_gguf_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def smollm(smollm2_gguf: Path) -> Tokenizer:
    return load_tokenizer(smollm2_gguf)  # through the dispatcher, so it is covered too


def test_smollm_special_ids(smollm: Tokenizer) -> None:
    assert isinstance(smollm, Tokenizer)
    assert smollm.name.startswith("gguf:") and smollm.vocab_size == 49152
    assert smollm.eod == 2 and smollm.decode([smollm.eod]) == "<|im_end|>"  # the Instruct model's EOS
    assert smollm.bos == 1 and smollm.decode([smollm.bos]) == "<|im_start|>"
    assert smollm.encode("<|endoftext|>") == [0]  # control tokens stay whole


def test_smollm_special_ids_are_the_files(smollm: Tokenizer, smollm2_gguf: Path) -> None:
    fields = gguf.GGUFReader(str(smollm2_gguf)).fields

    def scalar(key: str) -> int:
        field = fields[key]
        return int(field.parts[field.data[0]][0])

    assert smollm.eod == scalar("tokenizer.ggml.eos_token_id")
    assert smollm.bos == scalar("tokenizer.ggml.bos_token_id")


def test_smollm_round_trips(smollm: Tokenizer, text_lines: list[str]) -> None:
    for line in text_lines:
        assert smollm.decode(smollm.encode(line)) == line


def test_smollm_matches_transformers(smollm: Tokenizer, smollm2_gguf: Path, text_lines: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    assert len(reference) == smollm.vocab_size
    # Special ids are checked against the file, not transformers: its GGUF converter maps
    # eos to <|im_start|> in some 5.x releases (5.12.1) and to <|im_end|> in others (5.24).
    for line in text_lines:
        ids = smollm.encode(line)
        assert ids == reference.encode(line, add_special_tokens=False), line
        assert smollm.decode(ids) == reference.decode(ids)


def _write_llama_gguf(spm_path: Path, out: Path) -> None:
    """A tensor-less GGUF whose metadata is the sentencepiece model, as llama.cpp writes it."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    size = processor.get_piece_size()
    types = [_token_type(processor, i) for i in range(size)]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([processor.id_to_piece(i) for i in range(size)])
    writer.add_token_scores([processor.get_score(i) for i in range(size)])
    writer.add_token_types(types)
    writer.add_bos_token_id(processor.bos_id())
    writer.add_eos_token_id(processor.eos_id())
    writer.add_unk_token_id(processor.unk_id())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _token_type(processor: sentencepiece.SentencePieceProcessor, index: int) -> gguf.TokenType:
    if processor.is_unknown(index):
        return gguf.TokenType.UNKNOWN
    if processor.is_control(index):
        return gguf.TokenType.CONTROL
    if processor.is_byte(index):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def test_llama_gguf_matches_sentencepiece(tiny_sentencepiece: Path, tmp_path: Path, text_lines: list[str]) -> None:
    path = tmp_path / "spm.gguf"
    _write_llama_gguf(tiny_sentencepiece, path)
    ours = load_gguf_tokenizer(path)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tiny_sentencepiece))
    assert (ours.eod, ours.bos, ours.vocab_size) == (reference.eos_id(), reference.bos_id(), reference.get_piece_size())
    for line in text_lines:
        ids = ours.encode(line)
        assert ids == reference.encode(line), line
        assert ours.decode(ids) == reference.decode(ids)


def test_unsupported_gguf_tokenizer_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[PAD]", "[UNK]"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="bert"):
        load_gguf_tokenizer(path)


def test_truncated_gguf_is_user_error(smollm2_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    with smollm2_gguf.open("rb") as handle:
        path.write_bytes(handle.read(1000))
    with pytest.raises(UserError, match="truncated.gguf") as caught:
        load_gguf_tokenizer(path)
    assert "\n" not in str(caught.value)


def test_merge_outside_vocabulary_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|endoftext|>", "a", "b"])
    writer.add_token_merges(["a c"])
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="broken.gguf"):
        load_gguf_tokenizer(path)
