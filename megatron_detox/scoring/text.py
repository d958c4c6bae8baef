"""Text helpers: UTF-8-safe truncation, content hashing, dotted-key lookup."""

from __future__ import annotations

import hashlib

_MISSING = object()


def encode_utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates (legal in JSON ``\\ud800``) pass through."""
    return text.encode("utf-8", "surrogatepass")


def text_sha256(text: str) -> str:
    """Hex sha256 of the text's UTF-8 bytes: the cache key of a text."""
    return hashlib.sha256(encode_utf8(text)).hexdigest()


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, int | None]:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character.

    Returns ``(text, None)`` when it already fits, else ``(prefix, len(prefix in bytes))``.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    data = encode_utf8(text)
    if len(data) <= max_bytes:
        return text, None
    cut = max_bytes
    # Step back over continuation bytes (0b10xxxxxx) to the start of the cut character.
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    prefix = data[:cut]
    return prefix.decode("utf-8", "surrogatepass"), len(prefix)


