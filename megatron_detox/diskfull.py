"""A full disk (ENOSPC) or an exhausted quota (EDQUOT) as one line naming the path and the free space.

Every writer keeps the same promise under a full disk as under ``kill -9``: what was
complete stays complete (the previous ``latest`` checkpoint, every finished record), a
partial write is undone, and rerunning the same command after freeing space continues
where the run stopped. ``on_disk_full(path, cleanup=[temp, ...])`` wraps a write: if it
fails for lack of space, the temporary files and folders are removed and a
``DiskFull`` (a ``UserError``: the CLI's one line, exit 2) replaces the traceback.

A full disk does not always arrive as ``OSError(ENOSPC)``: SQLite reports
``SQLITE_FULL``, safetensors an ``IoError`` whose text carries the OS message, and
``torch.save`` (under DCP) only "unexpected pos 704 vs 598", the errno lost inside
its C++ writer. For that last case the folder is probed: a 1 MiB write + ``fsync``
that fails with ENOSPC/EDQUOT confirms the disk is full.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_detox.errors import UserError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OS_MESSAGES = {os.strerror(code): code for code in DISK_FULL_ERRNOS}  # "No space left on device", ...
# What torch's zip writer says when a write to its stream failed (the errno is not kept).
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed", "iostream error")
_PROBE_BYTES = 1 << 20


class DiskFull(UserError):
    """A write failed for lack of space (``errno``: ENOSPC or EDQUOT); a UserError, so one line, exit 2."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and the per-rank failures of a DCP CheckpointException."""
    stack, seen = [error], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            for failure in failures.values():
                found = failure[0] if isinstance(failure, tuple) else failure
                if isinstance(found, BaseException):
                    stack.append(found)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def disk_full_errno(error: BaseException, probe: Path | None = None) -> int | None:
    """ENOSPC or EDQUOT if ``error`` comes from a full disk, else None.

    ``probe``: a folder to test with a small write when the error is torch's errno-less one.
    """
    torch_write_failed = False
    for cause in _causes(error):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return cause.errno
        if isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return errno.ENOSPC
        text = str(cause)
        for message, code in _OS_MESSAGES.items():
            if message in text:
                return code
        torch_write_failed = torch_write_failed or any(marker in text for marker in _TORCH_WRITE_FAILED)
    if torch_write_failed and probe is not None:
        return probe_disk_full(probe)
    return None


def probe_disk_full(folder: Path) -> int | None:
    """Try a 1 MiB write + fsync in ``folder`` (removed after); the errno if the disk is full."""
    folder = _existing(folder)
    probe = folder / f".megatron-detox-space-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * _PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error.errno if error.errno in DISK_FULL_ERRNOS else None
    finally:
        probe.unlink(missing_ok=True)
    return None


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above ``path``."""
    path = Path(path).absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def disk_full_message(path: str | Path, code: int) -> str:
    folder = _existing(Path(path))
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free on {folder}"
    except OSError:
        free = f"free space of {folder} unknown"
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    return f"{path}: {what} ({free}); free some space, then rerun the same command to continue where it stopped"


def remove_quietly(paths: Iterable[str | Path]) -> None:
    """Delete temp files and folders of a failed write (on a full disk deleting still works)."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


@contextmanager
def on_disk_full(path: str | Path, *, cleanup: Iterable[str | Path] = (), probe: bool = False) -> Iterator[None]:
    """Turn a full disk inside the block into a one-line ``UserError`` naming ``path``, after
    removing ``cleanup``. ``probe``: also recognize torch's errno-less write failures."""
    try:
        yield
    except DiskFull:  # a nested write named its own file already
        remove_quietly(cleanup)
        raise
    except UserError:
        raise
    except BaseException as error:
        code = disk_full_errno(error, probe=Path(path) if probe else None)
        if code is None:
            raise
        remove_quietly(cleanup)
        raise DiskFull(disk_full_message(path, code), code) from None
