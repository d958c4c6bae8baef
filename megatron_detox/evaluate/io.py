"""Small file helpers shared by the evaluation stages: atomic writes, JSONL reading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` (1-based) for each non-blank line of a JSONL file.

    A line that is not a JSON object is a user mistake and names the file and line.
    """
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with path.open("r", encoding="utf-8") as handle:
        line_number = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError:
                raise UserError(f"{path}:{line_number + 1}: not UTF-8 text") from None
            if not line:
                return
            line_number += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: invalid JSON ({error.msg}); fix or remove the line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield line_number, record


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a valid JSON file ({error})") from None


def dotted(record: dict[str, Any], key: str) -> Any:
    """``record["a"]["b"]`` for ``key="a.b"``; ``KeyError`` when a part is missing."""
    node: Any = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node
