"""Small real corpus, a tiny BPE tokenizer trained on it, and a tiny-GPT run config (trainer/data tests).

The tokenizer is GPT-2 style byte-level BPE (``vocab.json`` + ``merges.txt``) trained with
the ``tokenizers`` library, because the real GPT-2 files are not available offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOD = "<|endoftext|>"


def real_lines(shared_data: Path, count: int) -> list[str]:
    """The first ``count`` non-blank lines of WikiText-2 validation."""
    text = (shared_data / "lm_text" / "wikitext2_tok_valid.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()][:count]


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({key: text}) + "\n")
    return path


def train_bpe(folder: Path, texts: list[str], vocab_size: int = 384) -> str:
    """Train byte-level BPE on ``texts``; return the ``VOCAB.json,MERGES.txt`` spec."""
    folder.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    backend.model.save(str(folder))
    return f"{folder / 'vocab.json'},{folder / 'merges.txt'}"


def tiny_gpt_config(path: Path, *, run_dir: Path, text_file: Path, tokenizer: str, vocab_size: int,
                    **sections: dict[str, Any]) -> Path:
    """A 2-layer, hidden-64 Megatron-GPT run config (seq 64) written to ``path``."""
    cfg: dict[str, Any] = {
        "model": {"preset": None, "name": "tiny-gpt", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                  "vocab_size": vocab_size, "make_vocab_size_divisible_by": 64, "max_position_embeddings": 64,
                  "position_embedding": "learned", "normalization": "layernorm", "activation": "gelu",
                  "add_bias_linear": True, "tie_word_embeddings": True, "eos_token_id": 0},
        "data": {"text_files": [str(text_file)], "tokenizer": tokenizer, "seq_length": 64, "split": "90,10,0"},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "cosine", "min_lr": 3e-4},
        "train": {"run_dir": str(run_dir), "steps": 8, "global_batch_size": 4, "micro_batch_size": 2,
                  "save_interval": 2, "keep_last": 2, "seed": 7},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """(JSONL of 400 WikiText-2 lines, tokenizer spec, tokenizer vocabulary size)."""
    from megatron_detox.tokenizers import load_tokenizer  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("corpus")
    lines = real_lines(shared_data, 400)
    spec = train_bpe(folder / "tokenizer", lines)
    return write_jsonl(folder / "wiki.jsonl", lines), spec, load_tokenizer(spec).vocab_size
