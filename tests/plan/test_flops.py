"""Parameter counts and FLOPs against published runs (Narayanan et al. 2021, MT-NLG 530B)."""

from __future__ import annotations

import pytest

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import closed_form_num_params, get_preset
from megatron_detox.plan.flops import flops_per_iteration, train_flops_per_token

SEQ, VOCAB = 2048, 51200

# Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
# Megatron-LM", Table 1: parameters (billion), heads, hidden, layers, TP, PP, GPUs, batch,
# achieved TFLOP/s per GPU (sequence 2048, vocabulary 51200, A100 peak 312 TFLOP/s).
TABLE_1 = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]


def megatron_gpt(heads: int, hidden: int, layers: int) -> ModelConfig:
    return get_preset("gpt-126m").replace(name=f"gpt-{layers}x{hidden}", num_layers=layers, hidden_size=hidden,
                                          num_attention_heads=heads, vocab_size=VOCAB)


def narayanan_flops(batch: int, layers: int, hidden: int, recompute: bool) -> float:
    """Eq. (3) of the paper and its no-recompute variant (72 = 3 x 24)."""
    s, n, h, v = SEQ, layers, hidden, VOCAB  # the paper's l is n here
    if recompute:
        return 96 * batch * s * n * h**2 * (1 + s / (6 * h) + v / (16 * n * h))
    return 72 * batch * s * n * h**2 * (1 + s / (6 * h) + v / (12 * n * h))


@pytest.mark.parametrize("row", TABLE_1, ids=[f"{r[0]}B" for r in TABLE_1])
def test_parameter_counts_match_table_1(row: tuple) -> None:
    billions, heads, hidden, layers = row[:4]
    count = closed_form_num_params(megatron_gpt(heads, hidden, layers))
    assert count / 1e9 == pytest.approx(billions, rel=0.05)
    if billions >= 18:  # printed to 0.1 B: the large rows agree to that rounding
        assert count / 1e9 == pytest.approx(billions, abs=0.06)


@pytest.mark.parametrize("row", TABLE_1, ids=[f"{r[0]}B" for r in TABLE_1])
@pytest.mark.parametrize("recompute", [True, False])
def test_flops_per_iteration_match_the_paper_formula(row: tuple, recompute: bool) -> None:
    _, heads, hidden, layers, _, _, _, batch, _ = row
    ours = flops_per_iteration(megatron_gpt(heads, hidden, layers), SEQ, batch, "full" if recompute else "none")
    assert ours == pytest.approx(narayanan_flops(batch, layers, hidden, recompute), rel=1e-12)


def test_training_time_estimates_of_the_paper() -> None:
    # §5.1: GPT-3 (175B) on 300B tokens, 1024 A100s at 140 TFLOP/s: 34 days; the 1T model on
    # 450B tokens, 3072 A100s at 163 TFLOP/s: 84 days. FLOPs counted with recompute.
    gpt3 = megatron_gpt(96, 12288, 96)
    one_t = megatron_gpt(160, 25600, 128)
    for cfg, tokens, gpus, tflops, days in ((gpt3, 300e9, 1024, 140, 34), (one_t, 450e9, 3072, 163, 84)):
        seconds = tokens * train_flops_per_token(cfg, SEQ, "full") / (gpus * tflops * 1e12)
        assert seconds / 86400 == pytest.approx(days, rel=0.05)


def test_one_trillion_row_is_52_percent_of_peak() -> None:
    # Table 1's last row: 163 TFLOP/s per GPU = 52 % of the A100's 312; aggregate 502 PFLOP/s.
    assert 163 / 312 == pytest.approx(0.52, abs=0.005)
    assert 3072 * 163 / 1000 == pytest.approx(502.0, rel=0.01)


@pytest.mark.parametrize(("nodes", "tflops", "iteration_s"), [(280, 126, 60.1), (350, 121, 50.2), (420, 113, 44.4)])
def test_mt_nlg_iteration_times(nodes: int, tflops: float, iteration_s: float) -> None:
    # Smith et al. 2022 (MT-NLG), Table 1: 8 A100s per DGX node, TP 8 x PP 35 per replica,
    # global batch 1920 x 2048 tokens, full recompute; per-GPU TFLOP/s and seconds per iteration.
    cfg = get_preset("gpt-530b")
    assert closed_form_num_params(cfg) / 1e9 == pytest.approx(530, rel=0.05)
    flops = flops_per_iteration(cfg, SEQ, 1920, "full")
    assert flops / (nodes * 8 * tflops * 1e12) == pytest.approx(iteration_s, rel=0.05)


def test_recompute_and_peft_change_the_count_as_documented() -> None:
    cfg = get_preset("gpt-1.3b")
    none = train_flops_per_token(cfg, 2048, "none")
    selective = train_flops_per_token(cfg, 2048, "selective")
    full = train_flops_per_token(cfg, 2048, "full")
    assert none < selective < full
    # Full recompute adds one forward of the layers (not the LM head): 4/3 of the layer share.
    logits = 6 * cfg.hidden_size * cfg.padded_vocab_size
    assert full - logits == pytest.approx(4 / 3 * (none - logits))
    # A frozen base: backward has no weight gradients, so about 2/3 of full training.
    peft = train_flops_per_token(cfg, 2048, "none", trainable_params=0)
    assert peft == pytest.approx(2 / 3 * none)
