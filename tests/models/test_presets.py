"""Every preset: the closed-form parameter count equals the module built on meta."""

from __future__ import annotations

import pytest

from megatron_detox.models import PRESETS, closed_form_num_params, get_preset
from megatron_detox.models.summary import build_meta_model, count_parameters


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_closed_form_count_matches_module(name: str) -> None:
    cfg = get_preset(name)
    assert closed_form_num_params(cfg) == count_parameters(build_meta_model(cfg))


def test_smollm2_is_135m() -> None:
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters (vocabulary 49152 needs no padding).
    assert closed_form_num_params(get_preset("smollm2-135m")) == 134_515_008
