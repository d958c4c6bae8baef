"""Activation memory against Korthikanti et al. 2022's expressions; weights, gradients, states."""

from __future__ import annotations

from dataclasses import replace

import pytest

from megatron_detox.models.presets import closed_form_num_params, get_preset
from megatron_detox.plan.layout import Layout
from megatron_detox.plan.memory import (
    in_flight_layer_microbatches,
    layer_activation_bytes,
    layer_num_params,
    stage_memory,
    stage_params,
)

# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
# Table 3: the 530B configuration (a = 128 heads, h = 20480, L = 105, s = 2048, t = 8, p = 35,
# micro-batch 1), with dropout and materialized attention scores as the paper assumes.
S, B, H, A, L, T, P = 2048, 1, 20480, 128, 105, 8, 35
CFG = get_preset("gpt-530b").replace(hidden_dropout=0.1, attention_dropout=0.1)
BASE = Layout(gpus=T * P, tp=T, pp=P, seq_length=S, global_batch=P * 4, micro_batch=B, flash_attention=False,
              sequence_parallel=False)


def per_layer(**changes: object) -> float:
    return layer_activation_bytes(CFG, replace(BASE, **changes))


def test_table_2_expressions() -> None:
    sbh = S * B * H
    core = 5 * A * S / H
    # No parallelism: sbh (34 + 5as/h)
    assert per_layer(tp=1, gpus=P) == pytest.approx(sbh * (34 + core))
    # Tensor parallel: sbh (10 + 24/t + 5as/(ht))
    assert per_layer() == pytest.approx(sbh * (10 + 24 / T + core / T))
    # + sequence parallel: sbh (34/t + 5as/(ht))
    assert per_layer(sequence_parallel=True) == pytest.approx(sbh * (34 / T + core / T))
    # Tensor parallel + selective recompute: sbh (10 + 24/t); with SP: 34 sbh / t
    assert per_layer(recompute="selective") == pytest.approx(sbh * (10 + 24 / T))
    assert per_layer(recompute="selective", sequence_parallel=True) == pytest.approx(sbh * 34 / T)
    # Full recompute: 2 sbh (the layer input)
    assert per_layer(recompute="full") == pytest.approx(2 * sbh)


def test_first_stage_total_matches_section_4_3() -> None:
    # 1F1B: the first stage holds p micro-batches of L/p layers = L layers' worth, plus the
    # embedding dropout masks sbhp/t; with SP + selective recompute: 34 sbhL/t + sbhp/t.
    layout = replace(BASE, sequence_parallel=True, recompute="selective")
    assert in_flight_layer_microbatches(CFG, layout, 0) == L
    activations = stage_memory(CFG, layout, 0).activations
    sbh = S * B * H
    assert activations == pytest.approx(34 * sbh * L / T + sbh * P / T)


def test_single_stage_adds_output_layer_terms() -> None:
    # p = 1: + 4 sbh/t (1 + v/h) for the final norm, the LM-head input and fp32 logits.
    layout = replace(BASE, pp=1, gpus=T, global_batch=1, sequence_parallel=True, recompute="selective")
    sbh, v = S * B * H, CFG.padded_vocab_size
    expected = 34 * sbh * L / T + sbh / T + 4 * sbh / T * (1 + v / H)
    assert stage_memory(CFG, layout, 0).activations == pytest.approx(expected)


def test_interleaved_schedule_holds_more() -> None:
    layout = replace(BASE, vpp=3, global_batch=P * 3)
    assert in_flight_layer_microbatches(CFG, layout, 0) == pytest.approx(L * (1 + (P - 1) / (P * 3)))


def test_flash_attention_and_no_dropout_drop_terms() -> None:
    cfg = get_preset("gpt-530b")  # our presets: no dropout
    flash = layer_activation_bytes(cfg, replace(BASE, sequence_parallel=True, flash_attention=True))
    sbh = S * B * H
    # 34 sbh/t less the two 1-byte residual dropout masks, no [s, s] scores, plus a float32 log-sum-exp per row and head.
    assert flash == pytest.approx(sbh * 32 / T + 4 * A * S * B / T)


def test_stage_parameters_add_up() -> None:
    cfg = get_preset("gpt-1.3b")
    layout = Layout(gpus=4, pp=4, global_batch=4)
    stages = [stage_params(cfg, layout, i) for i in range(4)]
    word = cfg.padded_vocab_size * cfg.hidden_size
    # The last stage keeps a copy of the tied embedding for the LM head.
    assert sum(s.total for s in stages) == closed_form_num_params(cfg) + word
    assert stages[1].total == 6 * layer_num_params(cfg)


@pytest.mark.parametrize(("precision", "per_param"), [("bf16", 18), ("fp16", 16), ("fp32", 16)])
def test_bytes_per_parameter(precision: str, per_param: int) -> None:
    cfg = get_preset("gpt-126m")
    memory = stage_memory(cfg, Layout(gpus=1, global_batch=1, seq_length=128, precision=precision), 0)
    assert memory.weights + memory.gradients + memory.optimizer == closed_form_num_params(cfg) * per_param


def test_sharding_and_peft() -> None:
    cfg = get_preset("gpt-1.3b")
    n = closed_form_num_params(cfg)
    replicas = stage_memory(cfg, Layout(gpus=8, global_batch=8), 0)
    zero1 = stage_memory(cfg, Layout(gpus=8, global_batch=8, distributed_optimizer=True), 0)
    fsdp = stage_memory(cfg, Layout(gpus=8, global_batch=8, dp_shard=8), 0)
    assert zero1.optimizer == pytest.approx(replicas.optimizer / 8)
    assert zero1.weights == replicas.weights
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer == pytest.approx(n * 18 / 8)
    assert fsdp.buffers == 2 * layer_num_params(cfg) * 2
    peft = stage_memory(cfg, Layout(gpus=8, global_batch=8), 0, trainable_fraction=0.01)
    assert peft.gradients == pytest.approx(0.01 * n * 4)
    assert peft.optimizer == pytest.approx(0.01 * n * 12)
    assert peft.weights == pytest.approx(1.01 * n * 2)
