"""Loading the Perspective API key and keeping it out of every message.

The key comes from ``$PERSPECTIVE_API_KEY`` or a key file, never from a
command-line value (it would show in ``ps`` and shell history). It travels in
the ``X-Goog-Api-Key`` header, not in the URL, and ``Redactor`` scrubs it (and
any ``key=`` URL parameter) from text that could reach a log or an exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from megatron_detox.errors import UserError

ENV_VAR = "PERSPECTIVE_API_KEY"
REDACTED = "<redacted>"
_URL_KEY = re.compile(r"(?i)([?&](?:key|api_key)=)[^&#\s'\"]+")


class ApiKey:
    """A secret string whose ``repr``/``str`` never show it; ``reveal()`` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey({REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> str:  # never pickled into a manifest or a worker by accident
        raise TypeError("ApiKey cannot be pickled")


def load_api_key(
    key_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ApiKey | None:
    """The key from ``key_file`` if given, else ``$PERSPECTIVE_API_KEY``, else ``None``."""
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise UserError(f"{path}: API key file not found: check --api-key-file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: cannot read API key file ({type(error).__name__})") from None
        if not value:
            raise UserError(f"{path}: API key file is empty: put the Perspective key in it")
        return ApiKey(value)
    value = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    return ApiKey(value) if value else None


class Redactor:
    """Removes known secrets and ``?key=...`` URL parameters from text."""

    def __init__(self, *secrets: ApiKey | str | None) -> None:
        values = [s.reveal() if isinstance(s, ApiKey) else s for s in secrets]
        # Longest first, so a key that contains another is removed whole.
        self._secrets = sorted({v for v in values if v}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _URL_KEY.sub(lambda m: m.group(1) + REDACTED, text)
