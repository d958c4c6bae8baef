"""Reading the small JSON files the evaluation stages write (metrics, settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a valid JSON file ({error})") from None


