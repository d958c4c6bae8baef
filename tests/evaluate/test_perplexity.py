"""Perplexity: a known distribution, sliding windows against brute force, .bin/.idx input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.evaluate.perplexity import compute_perplexity, load_documents, sliding_windows


class Unigram:
    """Ignores context: every position predicts the same distribution ``probs``."""

    def __init__(self, probs: list[float]) -> None:
        self.logits = torch.log(torch.tensor(probs))

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.logits.expand(*tokens.shape, -1).clone()  # [batch, seq, vocab]


def test_known_distribution_hand_computed() -> None:
    model = Unigram([0.5, 0.25, 0.25])
    # prefix 0, then targets 0,1,2,0 -> NLL = ln2 + 2ln2 + 2ln2 + ln2 = 6 ln2 over 4 tokens.
    result = compute_perplexity(model, [[0, 1, 2, 0]], max_length=3, stride=2, prefix_token=0)
    assert result.num_tokens == 4
    assert result.nll_sum == pytest.approx(6 * math.log(2))
    assert result.perplexity == pytest.approx(2 ** 1.5)
    # Token-weighted over documents: a second document [1, 1] adds 4 ln2 over 2 tokens.
    both = compute_perplexity(model, [[0, 1, 2, 0], [1, 1]], max_length=3, prefix_token=0, batch_size=2)
    assert both.num_tokens == 6 and both.perplexity == pytest.approx(2 ** (10 / 6))


def test_uniform_model_has_perplexity_vocab_size_and_padding_rows_are_dropped() -> None:
    model = Unigram([0.1] * 10)
    assert compute_perplexity(model, [list(range(10)) * 3], max_length=7, stride=3).perplexity == pytest.approx(10)
    # Megatron pads the vocabulary: logits beyond vocab_size must not take probability mass.
    padded = Unigram([0.1] * 10 + [0.1] * 6)  # 16 rows, only 10 real
    assert compute_perplexity(padded, [[1, 2, 3]], max_length=4, prefix_token=0,
                              vocab_size=10).perplexity == pytest.approx(10)
    assert compute_perplexity(padded, [[1, 2, 3]], max_length=4, prefix_token=0).perplexity == pytest.approx(16)


@pytest.mark.parametrize(("length", "max_length", "stride"), [(1, 4, 4), (9, 4, 1), (10, 4, 3), (17, 5, 5), (3, 8, 2)])
def test_windows_score_each_target_once(length: int, max_length: int, stride: int) -> None:
    tokens = list(range(100, 100 + length))
    windows = sliding_windows(tokens, max_length, stride, prefix_token=7)
    scored = [t for w in windows for t in w.targets[w.score_from:]]
    assert scored == tokens
    assert all(len(w.inputs) <= max_length and w.score_from >= 0 for w in windows)
    for w in windows:  # inputs and targets are the same sequence shifted by one
        assert w.inputs[1:] == w.targets[:-1]


def _brute_force_nll(model: torch.nn.Module, sequence: list[int], context: int) -> float:
    """Each target j scored from exactly the last ``context`` tokens before it."""
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(sequence)):
            window = torch.tensor([sequence[max(0, j - context):j]])
            logprobs = torch.log_softmax(model(window)[0, -1, :300].float(), dim=-1)
            total -= float(logprobs[sequence[j]])
    return total


def test_stride_one_equals_brute_force_context(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(0)
    doc = [int(t) for t in rng.integers(0, 300, size=20)]
    result = compute_perplexity(tiny_model, [doc], max_length=6, stride=1, prefix_token=5, vocab_size=300)
    assert result.nll_sum == pytest.approx(_brute_force_nll(tiny_model, [5] + doc, 6), rel=1e-5)
    # A window longer than the document is one full-context pass.
    full = compute_perplexity(tiny_model, [doc], max_length=64, prefix_token=5, vocab_size=300)
    assert full.nll_sum == pytest.approx(_brute_force_nll(tiny_model, [5] + doc, 64), rel=1e-5)
    # Less context gives a different (here: the model is random, any) value: the window matters.
    assert abs(full.nll_sum - result.nll_sum) > 1e-3


def test_batching_and_padding_do_not_change_the_result(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(1)
    docs = [[int(t) for t in rng.integers(0, 300, size=n)] for n in (3, 30, 11, 1, 25)]
    one = compute_perplexity(tiny_model, docs, max_length=12, stride=5, prefix_token=0, vocab_size=300)
    many = compute_perplexity(tiny_model, docs, max_length=12, stride=5, prefix_token=0, vocab_size=300,
                              batch_size=4)
    assert one.num_tokens == many.num_tokens == 70
    assert many.per_document_nll == pytest.approx(one.per_document_nll, rel=1e-5)


def test_bad_stride_is_a_user_error() -> None:
    with pytest.raises(UserError, match="stride=9"):
        compute_perplexity(Unigram([0.5, 0.5]), [[0, 1]], max_length=4, stride=9)


def test_indexed_dataset_documents(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path / "corpus"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    documents = [[1, 2, 3, 0], [4, 5, 0], [6, 0]]
    for doc in documents:
        builder.add_item(torch.tensor(doc, dtype=torch.int32))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    assert list(load_documents(prefix, encode=None)) == documents
    assert list(load_documents(f"{prefix}.bin", encode=None)) == documents
    model = Unigram([1 / 7] * 7)
    result = compute_perplexity(model, load_documents(prefix, None), max_length=8, prefix_token=0)
    assert result.num_tokens == 9 and result.perplexity == pytest.approx(7)


def test_text_and_jsonl_sources(tmp_path: Path) -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) % 7 for c in text]

    text = tmp_path / "a.txt"
    text.write_text("hello\nworld\n", encoding="utf-8")
    assert list(load_documents(text, encode)) == [encode("hello\nworld\n")]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "ab"}\n\n{"text": "cde"}\n', encoding="utf-8")
    assert list(load_documents(jsonl, encode)) == [encode("ab"), encode("cde")]
    jsonl.write_text('{"text": "ab"}\n{"body": "cde"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"a.jsonl:2: field 'text'"):
        list(load_documents(jsonl, encode))
    with pytest.raises(UserError, match="not found"):
        list(load_documents(tmp_path / "missing.txt", encode))
