"""Fixtures for the scoring tests: the real profanity model and a local Perspective server."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from megatron_detox.scoring.faults import FaultConfig
from megatron_detox.scoring.profanity import ProfanityScorer
from megatron_detox.scoring.server import RunningServer, ServerSettings, serve_in_thread

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def profanity() -> ProfanityScorer:
    return ProfanityScorer()


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server(profanity: ProfanityScorer, tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(faults=FaultConfig(...), **settings)`` -> a running loopback server.

    Its request log is ``running.log_path`` (``tmp_path / "server-N.jsonl"``).
    """
    running: list[RunningServer] = []

    def start(faults: FaultConfig | None = None, **settings: Any) -> RunningServer:
        log_path = tmp_path / f"server-{len(running)}.jsonl"
        server = serve_in_thread(
            profanity,
            port=0,
            settings=ServerSettings(faults=faults or FaultConfig(), **settings),
            log_path=log_path,
        )
        server.log_path = log_path  # type: ignore[attr-defined]
        running.append(server)
        return server

    yield start
    for server in running:
        server.close()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cli_command(*args: str) -> list[str]:
    """``python -m megatron_detox ...``; while other command modules are not written yet,
    the same ``cli.main`` runs with only the scoring commands registered."""
    from megatron_detox import cli

    if all(importlib.util.find_spec(name) is not None for name in cli.COMMAND_MODULES):
        return [sys.executable, "-m", "megatron_detox", *args]
    code = (
        "import sys; from megatron_detox import cli; "
        "cli.COMMAND_MODULES = ('megatron_detox.commands.score',); sys.exit(cli.main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cli_command(*args), cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
