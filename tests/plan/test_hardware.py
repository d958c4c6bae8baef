from __future__ import annotations

import pytest

from megatron_detox.errors import UserError
from megatron_detox.plan.hardware import GPUS, get_device, measure_cpu_device


def test_known_gpus_and_an_unknown_one() -> None:
    assert set(GPUS) == {"a100-40g", "a100-80g", "h100-80g", "h200"}
    a100 = get_device("a100-80g")
    assert a100.peak_tflops("bf16") == 312 and a100.peak_tflops("fp32") == 19.5
    assert a100.usable_gb == a100.memory_gb - a100.reserved_gb
    with pytest.raises(UserError, match="unknown GPU 'v100'; valid GPUs: a100-40g"):
        get_device("v100")


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_cpu_device_is_measured(clock: str) -> None:
    cpu = measure_cpu_device(matmul_size=128, copy_mib=4, repeats=2, clock=clock)
    assert cpu.peak_tflops("fp32") > 0 and cpu.memory_bandwidth_gbs > 0
    assert cpu.gpus_per_node == 1 and cpu.reserved_gb == 0
