"""The FLOPs formula against torch's FLOP counter; metrics.jsonl exactly-once on resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.train.metrics import MetricsWriter, read_metrics, train_flops_per_token


def test_flops_formula_matches_the_flop_counter() -> None:
    for cfg in (ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=500),
                ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=96, vocab_size=500, position_embedding="rope",
                            normalization="rmsnorm", activation="swiglu", add_bias_linear=False)):
        model, seq = Transformer(cfg), 32
        counter = FlopCounterMode(display=False)
        # The math backend computes attention with matmuls the counter sees (CPU flash is not counted).
        with counter, sdpa_kernel(SDPBackend.MATH):
            model(torch.zeros(1, seq, dtype=torch.long)).sum().backward()
        assert train_flops_per_token(cfg, seq) * seq == counter.get_total_flops()


def test_resume_drops_lines_after_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    writer = MetricsWriter(path, resume_step=3, enabled=True)
    writer.write({"step": 4, "loss": 40.0})
    writer.close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
                                  {"step": 4, "loss": 40.0}]
