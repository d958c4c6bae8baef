"""CpuDecodeLinears: each decode path (oneDNN packed, numpy K-major) gives torch's linear, only while entered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron_detox.generate.cpu_linears import (
    DECODE_MAX_ROWS,
    CpuDecodeLinears,
    decode_backend,
    onednn_packing_available,
)
from megatron_detox.generate.sampling import SamplingParams

from .conftest import ragged_prompts, run, tiny_config, tiny_model

BACKENDS = ["numpy", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn_packing_available(), reason="this torch build has no oneDNN weight packing"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_inputs_match_torch_and_the_forward_is_restored(backend: str) -> None:
    model = nn.Sequential(nn.Linear(24, 40), nn.Linear(40, 8, bias=False))
    x = torch.randn(5, 1, 24)
    with torch.no_grad():
        expected = model(x)
        with CpuDecodeLinears(model, backend=backend) as fast:
            assert len(fast.modules) == 2 and all("forward" in m.__dict__ for m in fast.modules)
            torch.testing.assert_close(model(x), expected)
            big = torch.randn(DECODE_MAX_ROWS + 1, 24)  # prefill-sized: torch's own GEMM
            torch.testing.assert_close(model[0](big), nn.functional.linear(big, model[0].weight, model[0].bias))
            model[0].weight.mul_(3.0)  # a weight changed while entered is never served stale
            torch.testing.assert_close(model[0](x), nn.functional.linear(x, model[0].weight, model[0].bias))
            model[1].weight = nn.Parameter(torch.randn(8, 40))  # nor is a replaced one
            h = torch.randn(5, 1, 40)
            torch.testing.assert_close(model[1](h), nn.functional.linear(h, model[1].weight))
    assert not any("forward" in m.__dict__ for m in model)


def test_excluded_hooked_and_non_fp32_layers_keep_torch() -> None:
    hooked, excluded, half = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4).to(torch.bfloat16)
    hooked.register_forward_hook(lambda module, inputs, out: out)
    model = nn.Sequential(hooked, excluded, half, nn.Linear(4, 4))
    assert len(CpuDecodeLinears(model, exclude=(excluded,), backend="numpy").modules) == 1
    with pytest.raises(ValueError, match="no decode path 'mkl'"):
        CpuDecodeLinears(model, backend="mkl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_is_unchanged(backend: str) -> None:
    model = tiny_model(tiny_config(100))
    prompts = ragged_prompts(6, 100, 2, max_length=9)
    params = SamplingParams(greedy=True)
    plain = run(model, prompts, list(range(6)), params, new=10)
    with CpuDecodeLinears(model, exclude=(model.output,), backend=backend):
        fast = run(model, prompts, list(range(6)), params, new=10)
    assert [g.tokens for g in fast] == [g.tokens for g in plain]


@pytest.mark.parametrize(("capability", "threads", "expected"), [
    ("AVX2", 1, "numpy"),  # OpenBLAS on K-major weights: one thread only
    ("AVX2", 2, None),  # OpenBLAS's pthreads and torch's OpenMP pool would fight: torch's GEMMs
    ("AVX512", 1, "onednn"),
    ("AVX512", 2, "onednn"),  # oneDNN runs on torch's own pool
])
def test_decode_path_by_isa_and_threads(capability: str, threads: int, expected: str | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron_detox.generate.engine import decode_one_token
    from megatron_detox.generate.stage import use_cpu_decode_linears

    if expected == "onednn" and not onednn_packing_available():
        pytest.skip("this torch build has no oneDNN weight packing")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model = tiny_model(tiny_config(100))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert decode_backend() == expected
        assert use_cpu_decode_linears(model, decode_one_token) is (expected is not None)
        assert not use_cpu_decode_linears(model, torch.compile(decode_one_token))  # compiled: torch's GEMMs
    finally:
        torch.set_num_threads(previous)
