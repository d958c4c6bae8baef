"""Strict JSON(L) reading shared by every stage: a bad line is a ``UserError`` naming file and line.

Lines are decoded one at a time, so a bad byte is reported on its own line and the
line numbers stay right after it; nothing is skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError, where


def read_json(path: Path) -> Any:
    """A whole JSON file (configs, metrics, settings); missing or malformed is a ``UserError``."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def iter_jsonl(path: str | Path, *, allow_blank: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based line number, record)`` for each line; every line must be a JSON object.

    Blank lines are skipped, or with ``allow_blank=False`` refused — for files whose
    line number is an index (a prompt's ``prompt_index`` is its 0-based line).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as error:
        raise UserError(f"{path}: cannot open ({error.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                if allow_blank:
                    continue
                raise UserError(f"{where(path, number)}: empty line; every line must be a JSON object "
                                "(line numbers index the records)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(f"{where(path, number)}: not valid UTF-8 (byte {error.start} of the line): "
                                "re-encode the file as UTF-8") from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where(path, number)}: malformed JSON ({error.msg} at column {error.colno}): "
                                "fix or remove the line") from None
            if not isinstance(record, dict):
                raise UserError(f"{where(path, number)}: expected a JSON object per line, got {type(record).__name__}")
            yield number, record


def get_dotted(record: Mapping[str, Any], key: str) -> Any:
    """``record["a"]["b"]`` for ``key="a.b"``; a literal key containing dots wins.

    Raises ``KeyError`` naming the first missing part.
    """
    if key in record:
        return record[key]
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value
