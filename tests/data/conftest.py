"""Fixtures: a real-text JSONL and a tiny BPE tokenizer trained on it (see tests/tiny_corpus.py)."""

from tiny_corpus import corpus  # noqa: F401 - re-exported as a fixture
