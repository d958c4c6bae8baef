from __future__ import annotations

from megatron_detox.models.presets import get_preset
from megatron_detox.plan.hardware import get_device
from megatron_detox.plan.layout import Layout, validate_layout
from megatron_detox.plan.search import candidate_layouts, search_layouts


def test_gpt_1_3b_on_16_gpus_needs_no_pipeline() -> None:
    cfg = get_preset("gpt-1.3b")
    plans = search_layouts(cfg, Layout(gpus=16, seq_length=2048, global_batch=512), get_device("a100-80g"), top=3)
    assert len(plans) == 3
    assert plans[0].layout["pp"] == 1
    assert all(p.fits for p in plans)
    speeds = [p.tokens_per_day for p in plans]
    assert speeds == sorted(speeds, reverse=True)


def test_candidates_are_valid_and_varied() -> None:
    cfg = get_preset("gpt-1.3b")
    base = Layout(gpus=16, seq_length=2048, global_batch=64)
    layouts = list(candidate_layouts(cfg, base))
    for layout in layouts:
        validate_layout(cfg, layout)  # raises on an invalid one
    assert {(lay.tp, lay.pp) for lay in layouts} >= {(1, 1), (2, 1), (8, 2), (1, 8)}
    assert {lay.recompute for lay in layouts} == {"none", "selective", "full"}


def test_a_model_too_big_for_the_gpus_gets_no_layout() -> None:
    plans = search_layouts(get_preset("gpt-530b"), Layout(gpus=8, seq_length=2048, global_batch=8),
                           get_device("a100-80g"))
    assert plans == []
