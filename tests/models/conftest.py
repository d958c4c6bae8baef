"""SmolLM2 loaded once per session, by us and by transformers, from the same GGUF."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from megatron_detox.models import ModelConfig, Transformer, load_model


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> tuple[Transformer, ModelConfig]:
    """Our model through the product path (``load_model`` of the preset name), fp32, eval."""
    model, cfg = load_model("smollm2-135m")
    return model, cfg


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` that transformers builds from the same GGUF."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    import gguf

    folder, name = smollm2_gguf.parent, smollm2_gguf.name
    with pytest.MonkeyPatch.context() as patch:
        # transformers rebuilds gguf's (pure) tensor-name map once per module: ~10 s on 2 cores.
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer
