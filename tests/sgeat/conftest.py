"""A tiny real model (random 2-layer Llama, BPE tokenizer trained here) for fast pipeline runs.

``configs/sgeat/ci.yaml`` runs on the embedded SmolLM2-135M (slow test); the fast tests run
the same config with ``tiny_overrides`` swapping in this model, so every stage still runs
its real code on a real model and tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.generate.conftest import write_tiny_hf_folder

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "sgeat" / "ci.yaml"


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder: config.json, model.safetensors, tokenizer.json."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny_pretrained"))


def tiny_overrides(folder: Path, work_dir: Path) -> list[str]:
    """``ci.yaml`` overrides: the tiny model instead of SmolLM2, ``work_dir`` as the run folder."""
    from megatron_detox.models.loading import resolve_weights

    cfg, _ = resolve_weights(str(folder))  # the architecture exactly as the loader reads it
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    return (["model.preset=null", f"model.pretrained={folder}"]
            + [f"model.{k}={json.dumps(v)}" for k, v in fields.items()]
            + [f"sgeat.work_dir={work_dir}"])
