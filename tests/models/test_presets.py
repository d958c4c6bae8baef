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


def test_models_command_lists_every_preset_with_its_exact_count(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from megatron_detox.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(PRESETS)
    for row in rows:
        assert row["parameters"] == closed_form_num_params(get_preset(row["name"])), row["name"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "529,582,469,120" in table and all(name in table for name in PRESETS)
