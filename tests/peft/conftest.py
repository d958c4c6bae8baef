"""Fixtures for the PEFT tests."""

from __future__ import annotations

import pytest
import torch
from peft_tiny import GPT, LLAMA

from megatron_detox.models import ModelConfig


@pytest.fixture(params=[GPT, LLAMA], ids=["gpt", "llama"])
def tiny_cfg(request: pytest.FixtureRequest) -> ModelConfig:
    return request.param


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))  # [batch, seq]
