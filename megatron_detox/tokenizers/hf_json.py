"""A Hugging Face ``tokenizer.json``, with its special tokens from the sibling configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers

from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import HFTokenizer, first_line, require_file, token_id

# Used only when no sibling config names the EOS token.
_EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """Load ``tokenizer.json`` (a file, or the folder holding it).

    EOS/BOS come, first hit wins, from ``tokenizer_config.json``,
    ``special_tokens_map.json`` (token strings) or ``config.json`` (ids) next to it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    require_file(path, "tokenizer.json")
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust parser raises a bare Exception
        raise UserError(
            f"{path}: not a valid tokenizer.json ({first_line(error)}); re-export it with tokenizer.save()"
        ) from error

    eos, bos = _special_ids(backend, path)
    if eos is None:
        eos = next((token_id(backend, t, path) for t in _EOS_FALLBACKS if backend.token_to_id(t) is not None), None)
    if eos is None:
        raise UserError(
            f'{path}: cannot tell the end-of-document token; add "eos_token" to a tokenizer_config.json next to it'
        )
    return HFTokenizer(name=f"hf:{path.parent.name or path.name}", backend=backend, eod=eos, bos=bos)


def _special_ids(backend: tokenizers.Tokenizer, path: Path) -> tuple[int | None, int | None]:
    """``(eos, bos)`` ids from the first sibling config that names them."""
    eos: int | None = None
    bos: int | None = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = _read_json(path.parent / name)
        eos = eos if eos is not None else token_id(backend, _token_string(config.get("eos_token")), path.parent / name)
        bos = bos if bos is not None else token_id(backend, _token_string(config.get("bos_token")), path.parent / name)
    model_config = _read_json(path.parent / "config.json")
    if eos is None:
        eos = _first_id(model_config.get("eos_token_id"))
    if bos is None:
        bos = _first_id(model_config.get("bos_token_id"))
    return eos, bos


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({first_line(error)}); fix or remove it") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; fix or remove it")
    return data


def _token_string(value: object) -> str | None:
    """A special token as configs spell it: ``"</s>"`` or ``{"content": "</s>", ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value: object) -> int | None:
    """``config.json`` ids are an int or, for several EOS tokens, a list of ints."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None
