"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder: ``$MEGATRON_DETOX_DATA``, default ``<repo>/../shared/data``."""
    folder = Path(os.environ.get("MEGATRON_DETOX_DATA", REPO.parent / "shared" / "data")).expanduser()
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is missing; set MEGATRON_DETOX_DATA to it")
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M GGUF in the model cache (downloaded once if absent)."""
    from megatron_detox.errors import UserError
    from megatron_detox.models.embedded import ensure_embedded_gguf

    try:
        return ensure_embedded_gguf()
    except UserError as exc:
        pytest.skip(f"embedded SmolLM2 GGUF unavailable: {exc}")
