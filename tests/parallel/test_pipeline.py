"""Stage splitting: layer counts and what each stage keeps."""

from __future__ import annotations

import torch

from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.parallel.pipeline import build_stage_module, stage_layer_counts, stage_layer_ids


def test_even_split_keeps_stage_zero_light() -> None:
    assert stage_layer_counts(8, 4) == [2, 2, 2, 2]
    assert stage_layer_counts(10, 4) == [2, 3, 3, 2]
    assert stage_layer_counts(5, 2, [1, 4]) == [1, 4]
    assert stage_layer_ids([2, 3, 3, 2], 2) == [5, 6, 7]


def test_stages_chain_to_the_full_model() -> None:
    cfg = ModelConfig(num_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=100,
                      make_vocab_size_divisible_by=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = Transformer(cfg)
    first = build_stage_module(model, [0], first=True, last=False)
    middle = build_stage_module(model, [1], first=False, last=False)
    last = build_stage_module(model, [2], first=False, last=True)
    assert middle.tok_embeddings is None and middle.output is None and list(middle.layers) == ["1"]
    # Names stay plain-model names; the tied head owns its own copy on the last stage.
    assert "layers.2.attention.q_proj.weight" in dict(last.named_parameters())
    assert "output.weight" in dict(last.named_parameters())
    tokens = torch.randint(0, 100, (2, 8))
    torch.testing.assert_close(last(middle(first(tokens))), model(tokens))
