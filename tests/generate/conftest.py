"""A tiny Llama-style model and a real byte-level BPE tokenizer trained here, for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import torch
from tokenizers import decoders, pre_tokenizers, trainers

from megatron_detox.generate.engine import generate_batch
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.tokenizers.base import HFTokenizer

LINES = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "A quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Self-generation lets a language model write its own training corpus.",
    "Toxicity filters keep the least toxic half of the generated samples.",
    "Numbers like 12345 and 3.14 appear in text, as do emoji and accents: cafe, naive.",
]


def tiny_config(vocab_size: int, **changes: object) -> ModelConfig:
    """2 layers, GQA, RoPE, SwiGLU; vocab padded to a multiple of 64 (padding rows exist)."""
    cfg = ModelConfig(name="tiny-llama", num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                      ffn_hidden_size=128, vocab_size=vocab_size, make_vocab_size_divisible_by=64,
                      max_position_embeddings=256, position_embedding="rope", normalization="rmsnorm",
                      activation="swiglu", add_bias_linear=False, tie_word_embeddings=True,
                      init_method_std=0.3)
    return cfg.replace(**changes)


def tiny_model(cfg: ModelConfig, seed: int = 7) -> Transformer:
    model = Transformer(cfg)
    init_weights(model, cfg, seed)
    return model.eval()


def ragged_prompts(n: int, vocab_size: int, seed: int = 0, max_length: int = 11) -> list[list[int]]:
    """``n`` prompts of 1..max_length random ids in [1, vocab_size)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_length + 1, (n,), generator=gen).tolist()
    return [torch.randint(1, vocab_size, (length,), generator=gen).tolist() for length in lengths]


def run(model, prompts, ids, params, new=10, stops=(), seed=5):  # type: ignore[no-untyped-def]
    """``generate_batch`` with the model's own sizes."""
    cfg = model.config
    return generate_batch(model, prompts, ids, params, max_new_tokens=new, vocab_size=cfg.vocab_size,
                          head_dim=cfg.head_dim, stop_ids=stops, seed=seed)


def assert_eos_compaction_exact(model: Transformer, prompts: list[list[int]]) -> None:
    """Greedy rows that hit a stop token end exactly there; the others, after the batch is
    compacted around them, stay token-identical to a run without stops."""
    from megatron_detox.generate.sampling import SamplingParams

    params = SamplingParams(greedy=True)
    ids = list(range(len(prompts)))
    free = run(model, prompts, ids, params, new=12)
    # Stop on tokens that some rows produce early, so rows finish at different steps
    # and the batch is compacted mid-way.
    stops = {g.tokens[1] for g in free[:3]}
    stopped = run(model, prompts, ids, params, new=12, stops=tuple(stops))
    finished = 0
    for a, b in zip(free, stopped, strict=True):
        cut = next((i for i, t in enumerate(a.tokens) if t in stops), None)
        if cut is None:
            assert b.tokens == a.tokens and b.finish_reason == "length"
        else:
            finished += 1
            assert b.tokens == a.tokens[:cut] and b.finish_reason == "eos"
    assert finished >= 3


def train_tokenizer() -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(LINES, trainer=trainer)
    return backend


@pytest.fixture(scope="session")
def tiny_tokenizer() -> HFTokenizer:
    return HFTokenizer(name="tiny-bpe", backend=train_tokenizer(), eod=0, bos=0)


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder (config.json, model.safetensors, tokenizer.json) of a tiny random model."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf"))


def write_tiny_hf_folder(folder: Path) -> Path:
    """Fill ``folder`` with a tiny random Llama-style model and its byte-level BPE tokenizer."""
    from safetensors.torch import save_file

    from megatron_detox.models.hf_keys import to_hf_state_dict

    backend = train_tokenizer()
    backend.save(str(folder / "tokenizer.json"))
    cfg = tiny_config(backend.get_vocab_size(), eos_token_id=0, bos_token_id=0)
    hf_config, hf_state = to_hf_state_dict(cfg, tiny_model(cfg).state_dict())
    (folder / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    save_file(hf_state, str(folder / "model.safetensors"))
    return folder
