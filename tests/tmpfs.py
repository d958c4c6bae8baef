"""A small real file system that fills up: a tmpfs mounted in a private mount namespace.

Needs root (or CAP_SYS_ADMIN) and ``unshare(1)``; ``tmpfs_unavailable()`` says why not,
for ``pytest.skip``. The mount exists only for the script's lifetime, so one script runs
a command on the small disk, grows it (``grow_tmpfs``) and reruns, copying what the test
checks to ``$OUT`` (outside the mount).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def tmpfs_unavailable() -> str | None:
    """None if a private tmpfs can be mounted here, else the reason."""
    if os.geteuid() != 0:
        return "mounting a tmpfs in a private mount namespace needs root"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    with tempfile.TemporaryDirectory() as mount:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount}"],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m + mount -t tmpfs refused here: {probe.stderr.strip()[:200]}"
    return None


GROW = 'mount -o remount,size=256m "$MNT"'


def run_on_small_tmpfs(mount: Path, size_kib: int, script: str, out: Path, env: dict[str, str],
                       cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh, with ``$MNT`` and ``$OUT`` set) with a ``size_kib`` tmpfs on ``mount``."""
    mount.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    full = f'set -u\nmount -t tmpfs -o size={size_kib}k tmpfs "$MNT" || exit 97\n{script}'
    return subprocess.run(["unshare", "-m", "sh", "-c", full], env={**env, "MNT": str(mount), "OUT": str(out)},
                          cwd=cwd, capture_output=True, text=True, timeout=600)
