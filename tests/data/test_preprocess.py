"""Preprocess: JSONL → megatron-core .bin/.idx that IndexedDataset reads back, bad lines named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_detox.cli import main
from megatron_detox.data import preprocess
from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_tokenizer


def test_round_trip_through_megatron_core(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    text_file, spec, _ = corpus
    tokenizer = load_tokenizer(spec)
    texts = [json.loads(line)["text"] for line in text_file.read_text(encoding="utf-8").splitlines()]
    report = preprocess(text_file, tmp_path / "wiki", tokenizer, append_eod=True, workers=2, progress=False)
    assert report.documents == len(texts) and not report.skipped
    dataset = IndexedDataset(str(tmp_path / "wiki"))
    assert len(dataset) == len(texts)
    assert dataset.document_indices.tolist() == list(range(len(texts) + 1))
    for index, text in enumerate(texts):
        ids = dataset[index].tolist()
        assert ids[-1] == tokenizer.eod
        assert tokenizer.decode(ids[:-1]) == text
    assert report.tokens == int(dataset.sequence_lengths.sum())


def test_workers_do_not_change_the_output(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    text_file, spec, _ = corpus
    tokenizer = load_tokenizer(spec)
    preprocess(text_file, tmp_path / "one", tokenizer, workers=1, progress=False)
    preprocess(text_file, tmp_path / "two", tokenizer, workers=2, progress=False)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


def _bad_file(path: Path) -> Path:
    lines = [b'{"text": "fine first line"}', b'{"other": "no text key"}', b'{"text": "unterminated',
             b'{"text": "bad \xff byte"}', b"", b'{"text": 17}', b'{"text": "fine last line"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_line_stops_the_run_with_file_and_line(tmp_path: Path, corpus: tuple[Path, str, int],
                                                       workers: int) -> None:
    source = _bad_file(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match=rf"^{source}:2: missing key 'text'; fix the line or pass --skip-bad$"):
        preprocess(source, tmp_path / "out", load_tokenizer(corpus[1]), workers=workers, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no partial dataset


def test_skip_bad_lists_every_skipped_line(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    source = _bad_file(tmp_path / "bad.jsonl")
    tokenizer = load_tokenizer(corpus[1])
    report = preprocess(source, tmp_path / "out", tokenizer, skip_bad=True, progress=False)
    reasons = {s.line: s.reason for s in report.skipped}
    assert sorted(reasons) == [2, 3, 4, 6]
    assert reasons[3].startswith("malformed JSON") and reasons[4] == "invalid UTF-8 at byte 15"
    assert reasons[6] == "key 'text' is int, expected a string"
    assert report.documents == 2
    saved = json.loads((tmp_path / "out.report.json").read_text())
    assert [s["line"] for s in saved["skipped"]] == [2, 3, 4, 6]
    dataset = IndexedDataset(str(tmp_path / "out"))
    assert [tokenizer.decode(dataset[i].tolist()[:-1]) for i in range(2)] == ["fine first line", "fine last line"]


def test_nested_key_and_plain_text(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    tokenizer = load_tokenizer(corpus[1])
    nested = tmp_path / "prompts.jsonl"
    nested.write_text('{"prompt": {"text": "hello there"}}\n', encoding="utf-8")
    preprocess(nested, tmp_path / "nested", tokenizer, json_key="prompt.text", append_eod=False, progress=False)
    dataset = IndexedDataset(str(tmp_path / "nested"))  # keep it alive: items are views of its mmap
    assert tokenizer.decode(dataset[0].tolist()) == "hello there"
    plain = tmp_path / "notes.txt"
    plain.write_text("first document\n\nsecond document\n", encoding="utf-8")
    report = preprocess(plain, tmp_path / "plain", tokenizer, append_eod=False, progress=False)
    assert report.documents == 2


def test_cli_preprocess_and_its_one_line_error(tmp_path: Path, corpus: tuple[Path, str, int],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    text_file, spec, _ = corpus
    prefix = tmp_path / "cli"
    code = main(["data", "preprocess", "--input", str(text_file), "--tokenizer", spec,
                 "--output-prefix", str(prefix), "--append-eod", "--workers", "2"])
    assert code == 0 and IndexedDataset.exists(str(prefix))
    bad = _bad_file(tmp_path / "bad.jsonl")
    code = main(["data", "preprocess", "--input", str(bad), "--tokenizer", spec, "--output-prefix",
                 str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"megatron-detox data: error: {bad}:2: missing key 'text'; fix the line or pass --skip-bad"


def test_cli_says_how_many_records_had_no_tokens(tmp_path: Path, corpus: tuple[Path, str, int],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "some_empty.jsonl"
    source.write_text('{"text": "one"}\n{"text": ""}\n{"text": "three"}\n', encoding="utf-8")
    args = ["data", "preprocess", "--input", str(source), "--tokenizer", corpus[1]]
    assert main([*args, "--output-prefix", str(tmp_path / "dropped")]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("2 documents") and "1 records with empty text gave no tokens" in last
    assert len(IndexedDataset(str(tmp_path / "dropped"))) == 2
    assert main([*args, "--output-prefix", str(tmp_path / "kept"), "--append-eod"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("3 documents")
    assert len(IndexedDataset(str(tmp_path / "kept"))) == 3


def test_cli_tokenizer_can_be_a_model_preset(tmp_path: Path, smollm2_gguf: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "The capital of France is Paris."}\n', encoding="utf-8")
    args = ["data", "preprocess", "--input", str(source), "--output-prefix"]
    assert main([*args, str(tmp_path / "preset"), "--tokenizer", "smollm2-135m"]) == 0
    assert main([*args, str(tmp_path / "file"), "--tokenizer", str(smollm2_gguf)]) == 0
    assert (tmp_path / "preset.bin").read_bytes() == (tmp_path / "file.bin").read_bytes()
    assert len(IndexedDataset(str(tmp_path / "preset"))[0]) > 3
    capsys.readouterr()
    # A preset without tokenizer files here says what to pass instead, in one line.
    assert main([*args, str(tmp_path / "gpt"), "--tokenizer", "gpt-126m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --tokenizer with a tokenizer file or folder" in err[0]
