"""``megatron-detox plan``: text, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.cli import main

MT_NLG = ["--model", "gpt-530b", "--gpus", "2240", "--pp", "35", "--global-batch", "1920", "--recompute", "full",
          "--distributed-optimizer", "--gpu", "a100-80g"]


def test_mt_nlg_layout_fits_and_tp1_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *MT_NLG, "--tp", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is True
    for key in ("memory_per_gpu_gb", "fits", "flops_per_iteration", "bubble_fraction", "step_time_s"):
        assert key in plan
    assert set(plan["memory_per_gpu_gb"]) >= {"weights", "gradients", "optimizer", "activations", "total"}
    assert main(["plan", *MT_NLG, "--tp", "1"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "TP1 x PP35 x DP64" in out


def test_search_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "gpt-1.3b", "--gpus", "16", "--global-batch", "512", "--search", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and " 1  TP1 x PP1 x DP16" in lines[2]


def test_sgeat_estimate_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  preset: smollm2-135m\ngenerate:\n  num_samples: 2000\n  max_new_tokens: 100\n"
                      "peft:\n  adapter:\n    bottleneck: 16\ntrain:\n  method: adapter\n  global_batch_size: 16\n"
                      "  micro_batch_size: 2\n  precision: fp32\ndata:\n  seq_length: 256\n", encoding="utf-8")
    assert main(["plan", "--model", str(config), "--gpus", "2", "--sgeat", "--score-rate", "50", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sgeat"]["generation"]["samples"] == 2000
    assert plan["sgeat"]["scoring_s"] == pytest.approx(40.0)
    assert plan["method"] == "adapter"
    assert plan["trainable_parameters"] == 30 * 2 * (2 * 576 * 16 + 16 + 576)  # two adapters per layer
    layout = plan["layout"]
    assert (layout["seq_length"], layout["global_batch"], layout["micro_batch"]) == (256, 16, 2)
    assert layout["precision"] == "fp32" and layout["dp_shard"] == 2  # parallel.dp_shard -1: FSDP over the rest
    # Flags still win over the file.
    assert main(["plan", "--model", str(config), "--gpus", "2", "--seq", "512", "--dp-shard", "1", "--json"]) == 0
    layout = json.loads(capsys.readouterr().out)["layout"]
    assert layout["seq_length"] == 512 and layout["dp_shard"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "gpt-1.3b", "--gpus", "48", "--tp", "3"], "does not divide the 32 attention heads"),
    (["--model", "gpt-1.3b", "--gpus", "20", "--pp", "5"], "do not divide the 24 layers"),
    (["--model", "gpt-1.3b", "--gpus", "16", "--tp", "3"], "--gpus 16 is not divisible"),
    (["--model", "gpt-1.3b", "--gpus", "16", "--gpu", "v100"], "unknown GPU 'v100'"),
    (["--model", "gpt-9b", "--gpus", "16"], "neither a preset"),
    (["--model", "gpt-1.3b", "--gpus", "16", "--mfu", "1.5"], "--mfu 1.5"),
    (["--model", "gpt-1.3b", "--gpus", "16", "--global-batch", "100"], "not divisible by --micro-batch"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--global-batch", "480", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
