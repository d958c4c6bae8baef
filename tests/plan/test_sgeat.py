from __future__ import annotations

import pytest

from megatron_detox.config import EvalConfig, GenerateConfig, SgeatConfig
from megatron_detox.errors import UserError
from megatron_detox.models.presets import closed_form_num_params, get_preset
from megatron_detox.plan.estimate import plan_training
from megatron_detox.plan.hardware import get_device
from megatron_detox.plan.layout import Layout
from megatron_detox.plan.sgeat import (
    DEFAULT_BANDWIDTH_EFFICIENCY,
    decode_step_seconds,
    estimate_generation,
    estimate_sgeat,
    kv_bytes_per_token,
)


def test_batch_one_decode_is_bandwidth_bound() -> None:
    cfg, h100 = get_preset("gpt-8.3b"), get_device("h100-80g")
    step = decode_step_seconds(cfg, h100, "bf16", tp=1, batch=1, context=1)
    weights = closed_form_num_params(cfg) * 2
    assert step == pytest.approx((weights + kv_bytes_per_token(cfg, "bf16", 1)) /
                                 (h100.memory_bandwidth_gbs * 1e9 * DEFAULT_BANDWIDTH_EFFICIENCY))
    # Large batches become compute-bound: time per token falls, then flattens.
    per_token = [decode_step_seconds(cfg, h100, "bf16", 1, b, 512) / b for b in (1, 16, 256, 1024)]
    assert per_token == sorted(per_token, reverse=True)


def test_smollm2_kv_cache_size() -> None:
    # 30 layers x (k, v) x 3 KV heads x 64 dims x 2 bytes
    assert kv_bytes_per_token(get_preset("smollm2-135m"), "bf16", 1) == 30 * 2 * 3 * 64 * 2


def test_generation_picks_a_batch_that_fits_and_scales_with_gpus() -> None:
    cfg, a100 = get_preset("gpt-8.3b"), get_device("a100-40g")
    one = estimate_generation(cfg, a100, gpus=1, tp=1, precision="bf16", samples=1000, new_tokens=1000)
    assert one.memory_per_gpu_gb <= a100.usable_gb
    assert 1 <= one.batch_size <= 512
    eight = estimate_generation(cfg, a100, gpus=8, tp=1, precision="bf16", samples=1000, new_tokens=1000)
    assert eight.total_s < one.total_s
    with pytest.raises(UserError, match="raise --tp"):
        estimate_generation(get_preset("gpt-530b"), a100, gpus=8, tp=8, precision="bf16", samples=8,
                            new_tokens=10)


def test_sgeat_run_adds_up() -> None:
    cfg, a100 = get_preset("gpt-1.3b"), get_device("a100-80g")
    train = plan_training(cfg, Layout(gpus=8, seq_length=2048, global_batch=256), a100)
    run = estimate_sgeat(cfg, a100, 8, train, score_rate=10.0, sgeat=SgeatConfig(keep_fraction=0.5),
                         evaluation=EvalConfig(), eval_prompts=100,
                         generate=GenerateConfig(num_samples=10000, max_new_tokens=500))
    assert run.scoring_s == pytest.approx(1000.0)
    assert run.training_tokens == 10000 * 250
    assert run.training_steps == -(-2_500_000 // (256 * 2048))
    assert run.training_s == pytest.approx(run.training_steps * train.step_time_s)
    assert run.evaluation_generation.samples == 100 * 25
    assert run.evaluation_scoring_s == pytest.approx(250.0)
    parts = run.generation.total_s + run.scoring_s + run.training_s + run.evaluation_generation.total_s + 250.0
    assert run.total_s == pytest.approx(parts)
    with pytest.raises(UserError, match="positive"):
        estimate_sgeat(cfg, a100, 8, train, score_rate=0.0)
