"""The run folder's ``manifest.json``: resolved config, its hash, and one record per stage.

A stage record::

    {"status": "running" | "done" | "failed", "key": sha256 of settings + inputs,
     "settings": {...}, "inputs": {stage: {file: sha256}}, "outputs": {file: sha256},
     "counts": {...}, "started": ISO time, "finished": ISO time, "seconds": float, "error": str}

Written atomically by rank 0 only, at every stage start and end, so ``sgeat status``
can read it from another shell at any moment.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from megatron_detox.atomic import write_json_atomic
from megatron_detox.errors import UserError

MANIFEST_FILE = "manifest.json"
STAGES: tuple[str, ...] = ("generate", "score", "filter", "preprocess", "train", "evaluate", "report")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def require_run_dir(work_dir: Path) -> None:
    """A folder given as an existing run (``sgeat status``/``compare``) must hold a manifest."""
    if not (work_dir / MANIFEST_FILE).is_file():
        raise UserError(f"{work_dir}: no {MANIFEST_FILE} here; pass the sgeat.work_dir of a run")


def read_manifest(work_dir: Path) -> dict[str, Any]:
    """The manifest, or an empty one for a new run folder."""
    path = work_dir / MANIFEST_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); "
                        "delete it to start the run over") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise UserError(f"{path}: not a megatron-detox sgeat manifest; pass another sgeat.work_dir")
    return data


def write_manifest(work_dir: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(work_dir / MANIFEST_FILE, manifest, sort_keys=False)


def outputs_intact(record: dict[str, Any], work_dir: Path) -> bool:
    """Every output file of a finished stage still exists with the recorded checksum size-cheaply:
    existence is checked always, the checksum only for files under 64 MiB."""
    for name, digest in record.get("outputs", {}).items():
        path = Path(name) if Path(name).is_absolute() else work_dir / name
        if not path.is_file():
            return False
        if path.stat().st_size < (64 << 20) and file_sha256(path) != digest:
            return False
    return True


def changed_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes
