"""JSONL output helpers for scoring and filtering (reading: ``megatron_detox.jsonl``,
atomic writing: ``megatron_detox.atomic``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError


def count_lines(path: str | Path) -> int:
    """Newline count (an upper bound on records) for progress bars; 0 if unreadable."""
    try:
        with Path(path).open("rb") as handle:
            return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def dump_record(record: dict[str, Any]) -> str:
    """One JSONL line, UTF-8 kept readable; escaped ASCII if it holds a lone surrogate."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)  # "\\ud800" escapes keep the file valid UTF-8
    return line + "\n"


def check_distinct(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse to overwrite the input with the output."""
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise UserError(f"{output_path}: --output must differ from --input")
