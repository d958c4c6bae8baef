"""``inference.load_for_inference``'s user errors, through the CLI: one line, exit 2, before any rendezvous."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from generate.conftest import tiny_config, write_tiny_hf_folder

from megatron_detox.cli import main
from megatron_detox.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_folder(tmp_path_factory.mktemp("inference_tiny"))


def generate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["generate", "--prompt", "The capital", "--max-new-tokens", "3", "--greedy", "--no-progress", *args])
    return code, capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = generate(["--model", str(tiny), "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--device cuda: no CUDA device is available" in err


def test_a_layout_that_does_not_divide_the_model(tiny: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 0 of a 4-process torchrun job: refused while validating, before joining the group.
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    code, err = generate(["--model", str(tiny), "--device", "cpu", "--tp", "4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "tp=4" in err  # the tiny model has 2 key/value heads


def test_a_checkpoint_missing_shards(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_detox.models.loading import load_model
    from megatron_detox.train.checkpoint import model_shape, save_checkpoint

    model, cfg = load_model(str(tiny))
    meta = {"model": model_shape(cfg), "model_config": dataclasses.asdict(cfg), "method": "full"}
    # One file per tensor (as a multi-rank save writes one per rank): delete one of them.
    ckpt = save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict()}, meta, rank=0, keep_last=1,
                           single_file_per_rank=False)
    files = sorted(ckpt.glob("*.distcp"))
    assert len(files) > 2
    files[1].unlink()
    code, err = generate(["--checkpoint", str(tmp_path / "run"), "--tokenizer", str(tiny / "tokenizer.json"),
                          "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{files[1].name}: missing; it holds shards of tensor" in err


def test_load_for_inference_cpu_is_fp32_and_eval(tiny: Path) -> None:
    from megatron_detox.inference import inference_dtype, load_for_inference

    loaded = load_for_inference(str(tiny), device="cpu")
    assert loaded.device == torch.device("cpu") and loaded.barrier is None and loaded.agree_batch_size is None
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters()) and not loaded.model.training
    assert loaded.config.num_layers == tiny_config(300).num_layers and len(loaded.model.layers) == 2
    assert inference_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    with pytest.raises(UserError, match="--dtype fp8"):
        inference_dtype("fp8", torch.device("cpu"))
