"""House style is checked, not hoped for: ruff on the whole tree, mypy on the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = _run("ruff", "check", "megatron_detox", "tests", "benchmarks", "tools")
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_is_clean() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = _run(sys.executable, "-m", "mypy", "megatron_detox", "--ignore-missing-imports")
    assert result.returncode == 0, result.stdout[-4000:]
