"""JSONL input/output for scoring and filtering: strict reading, atomic writing.

Reading names the file and line of any bad record (``UserError``); writing goes
to ``<output>.tmp``, is fsync'ed and renamed, so an output file is either the
complete result or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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


@contextmanager
def atomic_output(path: str | Path) -> Iterator[IO[str]]:
    """Write ``path`` via ``path.tmp``: fsync, then rename; on error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    handle = temp.open("w", encoding="utf-8", newline="\n")
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except BaseException:
        handle.close()
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write a small JSON document atomically."""
    with atomic_output(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_distinct(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse to overwrite the input with the output."""
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise UserError(f"{output_path}: --output must differ from --input")
