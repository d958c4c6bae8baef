"""GPT training samples through megatron-core: deterministic order, blends, split, bad prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import torch
from tiny_corpus import write_jsonl

from megatron_detox.data import build_gpt_datasets, parse_blend, preprocess, sample_batch
from megatron_detox.errors import UserError
from megatron_detox.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def prefixes(corpus: tuple[Path, str, int], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    text_file, spec, _ = corpus
    tokenizer = load_tokenizer(spec)
    folder = tmp_path_factory.mktemp("prefixes")
    texts = [json.loads(line)["text"] for line in text_file.read_text(encoding="utf-8").splitlines()]
    first = write_jsonl(folder / "a.jsonl", texts[:200])
    second = write_jsonl(folder / "b.jsonl", texts[200:])
    preprocess(first, folder / "a", tokenizer, progress=False)
    preprocess(second, folder / "b", tokenizer, progress=False)
    return str(folder / "a"), str(folder / "b")


def _build(prefixes: list[str], spec: str, cache: Path, seed: int = 5, num: int = 40):  # noqa: ANN202
    return build_gpt_datasets(parse_blend(prefixes), load_tokenizer(spec), seq_length=32, seed=seed,
                              split="90,10,0", num_samples=(num, 8, 0), cache_dir=cache)


def test_sample_order_is_identical_across_runs(tmp_path: Path, prefixes: tuple[str, str],
                                               corpus: tuple[Path, str, int]) -> None:
    first = _build([prefixes[0]], corpus[1], tmp_path / "one")[0]
    second = _build([prefixes[0]], corpus[1], tmp_path / "two")[0]  # rebuilt from scratch
    cached = _build([prefixes[0]], corpus[1], tmp_path / "one")[0]  # read back from the index cache
    batch = sample_batch(first, 0, 40)
    for other in (second, cached):
        assert torch.equal(sample_batch(other, 0, 40)["tokens"], batch["tokens"])
    reseeded = _build([prefixes[0]], corpus[1], tmp_path / "three", seed=6)[0]
    assert not torch.equal(sample_batch(reseeded, 0, 40)["tokens"], batch["tokens"])
    # Each sample is a window of seq+1 tokens: labels are the tokens shifted by one.
    assert torch.equal(batch["tokens"][:, 1:], batch["labels"][:, :-1])
    assert batch["tokens"].shape == (40, 32) and bool((batch["loss_mask"] == 1).all())


def test_weighted_blend_follows_the_weights(tmp_path: Path, prefixes: tuple[str, str],
                                            corpus: tuple[Path, str, int]) -> None:
    train_ds = _build(["0.2", prefixes[0], "0.8", prefixes[1]], corpus[1], tmp_path, num=500)[0]
    counts = numpy.bincount(train_ds.dataset_index[:500], minlength=2) / 500
    assert counts == pytest.approx([0.2, 0.8], abs=0.02)


def test_split_gives_disjoint_documents(tmp_path: Path, prefixes: tuple[str, str],
                                        corpus: tuple[Path, str, int]) -> None:
    train_ds, valid_ds, test_ds = _build([prefixes[0]], corpus[1], tmp_path)
    assert test_ds is None
    train_docs = set(train_ds.indices.tolist())
    valid_docs = set(valid_ds.indices.tolist())
    assert train_docs and valid_docs and not train_docs & valid_docs
    assert len(valid_docs) == 20  # 10 % of 200 documents


def test_missing_prefix_and_bad_blends(tmp_path: Path, prefixes: tuple[str, str], corpus: tuple[Path, str, int]) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match=r"^data.paths\[1\]=.*nope\.bin and .*nope\.idx not found"):
        _build([prefixes[0], missing], corpus[1], tmp_path)
    with pytest.raises(UserError, match="mixes weights and prefixes"):
        parse_blend(["a", "0.5", "b"])
    with pytest.raises(UserError, match="pairs"):
        parse_blend(["0.5", "a", "0.5"])
    assert parse_blend([0.3, "a", 0.7, "b"]).weights == [0.3, 0.7]


def test_tiny_corpus_empty_splits(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    """8 documents at split 95,5,0: valid gets none. Unrequested it is skipped; requested it is refused."""
    text_file, spec, _ = corpus
    texts = [json.loads(line)["text"] for line in text_file.read_text(encoding="utf-8").splitlines()][:8]
    preprocess(write_jsonl(tmp_path / "small.jsonl", texts), tmp_path / "small", load_tokenizer(spec), progress=False)
    blend = parse_blend([str(tmp_path / "small")])
    train_ds, valid_ds, _ = build_gpt_datasets(blend, load_tokenizer(spec), seq_length=32, seed=1, split="95,5,0",
                                               num_samples=(16, 0, 0), cache_dir=tmp_path / "cache")
    assert train_ds is not None and len(train_ds) >= 16 and valid_ds is None
    with pytest.raises(UserError, match=r"the valid split of .*small gets no documents \(8 in total\)"):
        build_gpt_datasets(blend, load_tokenizer(spec), seq_length=32, seed=1, split="95,5,0",
                           num_samples=(16, 4, 0), cache_dir=tmp_path / "cache")
