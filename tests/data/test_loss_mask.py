"""Loss masks beside an indexed dataset: written by preprocess, applied over megatron-core's packed spans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_detox.cli import main
from megatron_detox.data import build_gpt_datasets, parse_blend, preprocess, sample_batch
from megatron_detox.data.loss_mask import loss_mask_prefix
from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_tokenizer


def _records(corpus: tuple[Path, str, int], count: int = 120) -> list[dict[str, object]]:
    """Prompt/continuation pairs cut from real text; every third one marked as cut (did not end)."""
    texts = [json.loads(line)["text"] for line in corpus[0].read_text(encoding="utf-8").splitlines()][:count]
    records = []
    for index, text in enumerate(texts):
        words = text.split()
        cut = max(1, len(words) // 3)
        records.append({"prompt": " ".join(words[:cut]), "continuation": " " + " ".join(words[cut:]),
                        "ends": index % 3 != 0})
    return records


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_preprocess_writes_a_mask_that_leaves_the_context_and_unended_eods_out(
        tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    tokenizer = load_tokenizer(corpus[1])
    records = _records(corpus, 20)
    source = _write(tmp_path / "pairs.jsonl", records)
    report = preprocess(source, tmp_path / "pairs", tokenizer, json_key="continuation", context_key="prompt",
                        ends_key="ends", workers=2, progress=False)
    tokens, mask = IndexedDataset(str(tmp_path / "pairs")), IndexedDataset(loss_mask_prefix(tmp_path / "pairs"))
    assert len(tokens) == len(mask) == len(records) == report.documents
    for index, record in enumerate(records):
        context = tokenizer.encode(record["prompt"])
        text = tokenizer.encode(record["continuation"])
        assert tokens[index].tolist() == context + text + [tokenizer.eod]
        assert mask[index].tolist() == [0] * len(context) + [1] * len(text) + [int(record["ends"])]
    assert report.loss_tokens == int(sum(mask[i].sum() for i in range(len(mask))))
    assert report.loss_tokens < report.tokens


def test_samples_carry_the_mask_of_exactly_their_tokens(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    """Packed samples cross documents; each label's loss follows the mask of the token it predicts.

    The reference reads the mask companion as if it were a token dataset: megatron-core cuts it
    into the same spans (they depend only on document lengths and the seed), so its labels are
    the expected mask, independent of how ``LossMaskedGPTDataset`` finds its spans.
    """
    tokenizer = load_tokenizer(corpus[1])
    source = _write(tmp_path / "pairs.jsonl", _records(corpus))
    prefix = str(tmp_path / "pairs")
    preprocess(source, prefix, tokenizer, json_key="continuation", context_key="prompt", ends_key="ends",
               progress=False)

    def build(path: str, cache: str):  # noqa: ANN202
        return build_gpt_datasets(parse_blend([path]), tokenizer, seq_length=24, seed=3, split="100,0,0",
                                  num_samples=(300, 0, 0), cache_dir=tmp_path / cache)[0]

    masked = sample_batch(build(prefix, "masked"), 0, 300)
    reference = sample_batch(build(loss_mask_prefix(prefix), "reference"), 0, 300)
    expected = (reference["labels"] == 1).float()
    assert torch.equal(masked["loss_mask"], expected)
    assert 0 < float(expected.mean()) < 1  # both kinds of positions are present


def test_a_dataset_written_without_a_mask_removes_the_stale_one(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    tokenizer = load_tokenizer(corpus[1])
    source = _write(tmp_path / "pairs.jsonl", _records(corpus, 30))
    prefix = tmp_path / "pairs"
    preprocess(source, prefix, tokenizer, json_key="continuation", context_key="prompt", progress=False)
    assert IndexedDataset.exists(loss_mask_prefix(prefix))
    preprocess(source, prefix, tokenizer, json_key="continuation", progress=False)
    assert not Path(loss_mask_prefix(prefix) + ".bin").exists()
    assert not Path(loss_mask_prefix(prefix) + ".idx").exists()
    batch = sample_batch(build_gpt_datasets(parse_blend([str(prefix)]), tokenizer, seq_length=16, seed=1,
                                            split="100,0,0", num_samples=(20, 0, 0),
                                            cache_dir=tmp_path / "cache")[0], 0, 20)
    assert bool((batch["loss_mask"] == 1).all())


def test_a_mask_of_other_documents_is_refused(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    tokenizer = load_tokenizer(corpus[1])
    records = _records(corpus, 30)
    preprocess(_write(tmp_path / "a.jsonl", records), tmp_path / "a", tokenizer, json_key="continuation",
               progress=False)
    preprocess(_write(tmp_path / "b.jsonl", records[:20]), tmp_path / "b", tokenizer, json_key="continuation",
               context_key="prompt", progress=False)
    for suffix in (".bin", ".idx"):
        shutil.copy(loss_mask_prefix(tmp_path / "b") + suffix, loss_mask_prefix(tmp_path / "a") + suffix)
    with pytest.raises(UserError, match=r"a\.loss_mask\.idx: the loss mask does not match the documents of .*"
                                         r"\(20 against 30 documents"):
        build_gpt_datasets(parse_blend([str(tmp_path / "a")]), tokenizer, seq_length=16, seed=1, split="100,0,0",
                           num_samples=(10, 0, 0), cache_dir=tmp_path / "cache")


def test_bad_mask_inputs_are_named(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    tokenizer = load_tokenizer(corpus[1])
    text = tmp_path / "plain.txt"
    text.write_text("one line\n", encoding="utf-8")
    with pytest.raises(UserError, match="needs JSONL input"):
        preprocess(text, tmp_path / "x", tokenizer, context_key="prompt", progress=False)
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "continuation": " b", "ends": True},
                                          {"prompt": "a", "continuation": " b", "ends": "yes"}])
    with pytest.raises(UserError, match=rf"^{bad}:2: key 'ends' must be true or false, got 'yes'"):
        preprocess(bad, tmp_path / "y", tokenizer, json_key="continuation", ends_key="ends", progress=False)
    with pytest.raises(UserError, match="needs the end-of-document token"):
        preprocess(bad, tmp_path / "z", tokenizer, json_key="continuation", ends_key="ends", append_eod=False,
                   progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "plain.txt"]  # nothing half-written


def test_cli_context_key_reports_the_tokens_that_carry_loss(tmp_path: Path, corpus: tuple[Path, str, int],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "pairs.jsonl", _records(corpus, 10))
    assert main(["data", "preprocess", "--input", str(source), "--tokenizer", corpus[1], "--json-key",
                 "continuation", "--context-key", "prompt", "--ends-key", "ends", "--append-eod",
                 "--output-prefix", str(tmp_path / "pairs")]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("10 documents") and "carry loss)" in last
    assert IndexedDataset.exists(loss_mask_prefix(tmp_path / "pairs"))
