"""Crash-safe file writes: a reader (or a rerun after ``kill -9``) sees the old content
or the complete new content, never a half-written file.

The temp file sits beside the target (same file system, so the rename is atomic) and
carries the process id, so ranks writing the same file do not collide; it is fsynced
before the rename and removed if writing fails. A full disk becomes one ``UserError``
line naming the file and the free space (``megatron_detox.diskfull``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from megatron_detox.diskfull import DiskFull, disk_full_errno, disk_full_message
from megatron_detox.errors import UserError


@contextmanager
def atomic_output(path: str | Path) -> Iterator[IO[str]]:
    """A text handle whose content replaces ``path`` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    handle = temp.open("w", encoding="utf-8", newline="\n")
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):  # closing flushes the buffer: on a full disk that fails again
            handle.close()
        temp.unlink(missing_ok=True)
        code = disk_full_errno(error)
        if code is not None:  # one line naming the file and the free space; the old content is intact
            raise DiskFull(disk_full_message(path, code), code) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = True) -> None:
    """A small JSON document, indented, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def check_run_settings(path: Path, settings: dict[str, Any], what_to_do: str) -> None:
    """Record a resumable run's settings in ``path``, or refuse a rerun with other settings.

    Resuming into a folder made with different settings would mix two runs' records.
    """
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            key = changed[0]
            raise UserError(f"{path}: this folder holds a run with {key}={previous.get(key)!r}, not "
                            f"{settings.get(key)!r}; {what_to_do}")
        return
    write_json_atomic(path, settings)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
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
