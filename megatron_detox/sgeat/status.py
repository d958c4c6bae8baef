"""``sgeat status RUN_DIR``: the manifest as a table, with live progress of a running stage.

Reads only (manifest, shard files, metrics.jsonl), so it is safe from another shell
while ``sgeat run`` is going.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.sgeat.manifest import STAGES, read_manifest, require_run_dir


def format_status(work_dir: str | Path) -> str:
    work_dir = Path(work_dir)
    require_run_dir(work_dir)
    manifest = read_manifest(work_dir)
    lines = [f"run {work_dir} (config {str(manifest.get('config_hash', '?'))[:12]}, "
             f"mode {manifest.get('config', {}).get('sgeat', {}).get('mode', '?')})"]
    for name in STAGES:
        record = manifest["stages"].get(name)
        if record is None:
            lines.append(f"  {name:<10} pending")
            continue
        status = record.get("status", "?")
        line = f"  {name:<10} {status:<8}"
        if status == "done":
            line += f" {record.get('seconds', 0):8.1f}s  {_counts(record.get('counts', {}))}"
        elif status == "running":
            line += f" since {record.get('started', '?')}  {_live(work_dir, name, record)}"
        elif status == "failed":
            line += f" {record.get('error', '')}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _counts(counts: dict[str, Any]) -> str:
    shown = []
    for key, value in counts.items():
        if isinstance(value, float):
            shown.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) < 60:
            shown.append(f"{key}={value}")
    return " ".join(shown)


def _live(work_dir: Path, name: str, record: dict[str, Any]) -> str:
    stage_dir = work_dir / name
    try:
        if name == "generate":
            from megatron_detox.generate.writer import finished_ids

            run = stage_dir / "run.json"
            total = json.loads(run.read_text(encoding="utf-8")).get("num_samples") if run.is_file() else None
            return f"{len(finished_ids(stage_dir))}/{total or '?'} samples written"
        if name == "score":
            done = sum(_lines(p) for p in stage_dir.glob(".*.tmp"))
            return f"{done} records scored so far"
        if name == "train":
            steps = record.get("settings", {}).get("train", {}).get("steps", "?")
            last = 0
            metrics = stage_dir / "metrics.jsonl"
            if metrics.is_file():
                for line in metrics.read_text(encoding="utf-8").splitlines():
                    if line.strip().endswith("}"):
                        last = int(json.loads(line).get("step", last))
            return f"step {last}/{steps}"
        if name == "evaluate":
            finished = sorted(p.parent.name for p in stage_dir.glob("*/metrics.json"))
            return f"finished: {', '.join(finished) or 'none yet'}"
    except (OSError, ValueError, UserError):
        return "(progress unreadable right now)"
    return ""


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
