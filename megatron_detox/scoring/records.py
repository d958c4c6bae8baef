"""JSONL input/output for scoring and filtering: strict reading, atomic writing.

Reading names the file and line of any bad record (``UserError``); writing goes
to ``<output>.tmp``, is fsync'ed and renamed, so an output file is either the
complete result or absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError, where


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line; every line must be a JSON object."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: input file not found: check --input") from None
    except OSError as error:
        raise UserError(f"{path}: cannot open input ({error.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{where(path, number)}: not valid UTF-8 (byte {error.start} of the line): "
                    "re-encode the file as UTF-8"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{where(path, number)}: malformed JSON ({error.msg} at column {error.colno}): "
                    "fix or remove the line"
                ) from None
            if not isinstance(record, dict):
                raise UserError(f"{where(path, number)}: expected a JSON object per line, got {type(record).__name__}")
            yield number, record


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
