"""Real text and tiny tokenizers trained here on real text (the GGUF comes from tests/conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders, pre_tokenizers, trainers

# Edge cases the real lines may miss: spacing, newlines, specials as text, scripts, emoji.
EDGE_CASES = [
    "",
    " ",
    "  leading and   inner   spaces  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "numbers 12345 3.14159 1,000,000 and 2023-11-25",
    "<|endoftext|> in the middle <|endoftext|>",
    "émigré café naïve Straße",
    "日本語のテキスト 中文 한국어",
    "emoji 🙂🔥👍🏽 family 👨‍👩‍👧",
    "it's they're we'll I'd",
]


@pytest.fixture(scope="session")
def text_lines(shared_data: Path) -> list[str]:
    """~400 real lines: WikiText-2 validation plus RealToxicityPrompts prompts."""
    wiki = (shared_data / "lm_text" / "wikitext2_tok_valid.txt").read_text(encoding="utf-8").splitlines()
    lines = [line for line in wiki if line.strip()][:200]
    rtp = shared_data / "rtp" / "decodingtrust" / "toxic.jsonl"
    with rtp.open(encoding="utf-8") as handle:
        for number, row in enumerate(handle):
            if number >= 200:
                break
            record = json.loads(row)
            lines.append(record["prompt"]["text"] + record["continuation"]["text"])
    return lines + EDGE_CASES


@pytest.fixture(scope="session")
def tiny_bpe(text_lines: list[str]) -> tokenizers.Tokenizer:
    """A 1000-token byte-level BPE trained on the real lines, ``<|endoftext|>`` special."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(text_lines, trainer=trainer)
    return backend


@pytest.fixture(scope="session")
def tiny_sentencepiece(tmp_path_factory: pytest.TempPathFactory, text_lines: list[str]) -> Path:
    """A 600-piece sentencepiece BPE model trained on the real lines, Llama-style options."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text_lines if line.strip()]),
        model_writer=model,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=0.9995,
        minloglevel=2,
        num_threads=1,
    )
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path
