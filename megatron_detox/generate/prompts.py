"""What to generate: prompts read from JSONL, expanded into numbered work items.

Sample ids are dense and stable: ``id = prompt_index * repeat + sample_index`` for a
prompt file, ``id = sample_index`` for unconditional samples. ``prompt_index`` is the
0-based line of the prompt file, so a record can always be traced back to its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError


@dataclass(frozen=True)
class WorkItem:
    id: int
    prompt_index: int | None
    """0-based line of the prompt file; None for unconditional samples."""
    sample_index: int
    prompt: str


def _lookup(record: Any, key: str) -> Any:
    node = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def read_prompts(path: str | Path, key: str = "prompt.text", allow_empty: bool = False) -> list[str]:
    """Prompt texts, one per line of a JSONL file, taken from the dotted ``key``.

    Every problem (bad UTF-8, malformed JSON, missing key, a non-string or empty prompt)
    is a ``UserError`` naming the file and 1-based line; no line is silently skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found")
    prompts: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{where}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
            if not line.strip():
                raise UserError(f"{where}: empty line; every line must be a JSON object with {key!r}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            try:
                text = _lookup(record, key)
            except KeyError:
                raise UserError(f"{where}: field {key!r} is missing; pass --prompt-key with the right "
                                f"dotted key") from None
            if not isinstance(text, str):
                raise UserError(f"{where}: field {key!r} is {type(text).__name__}, expected a string")
            if not text.strip() and not allow_empty:
                raise UserError(f"{where}: field {key!r} is an empty prompt; remove it or pass "
                                f"--allow-empty-prompts to generate from BOS")
            prompts.append(text)
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts


def prompt_items(prompts: list[str], repeat: int) -> list[WorkItem]:
    """``repeat`` samples of every prompt, ids in (prompt, sample) order."""
    return [WorkItem(p * repeat + s, p, s, text) for p, text in enumerate(prompts) for s in range(repeat)]


def unconditional_items(num_samples: int) -> list[WorkItem]:
    """``num_samples`` samples started from the BOS/EOS token alone."""
    return [WorkItem(i, None, i, "") for i in range(num_samples)]
