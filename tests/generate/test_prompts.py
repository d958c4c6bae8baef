"""Prompt files: dotted keys, ids, and one-line errors with file:line for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.generate.prompts import prompt_items, read_prompts, unconditional_items


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    return path


def test_reads_dotted_key_and_numbers_items(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"prompt": {"text": "Hello"}}\n{"prompt": {"text": "caf\\u00e9 \xc3\xa9"}}\n')
    prompts = read_prompts(path)
    assert prompts == ["Hello", "café é"]
    items = prompt_items(prompts, repeat=3)
    assert [(i.id, i.prompt_index, i.sample_index) for i in items[2:4]] == [(2, 0, 2), (3, 1, 0)]
    assert read_prompts(write(tmp_path, b'{"text": "x"}\n'), key="text") == ["x"]
    assert [i.id for i in unconditional_items(3)] == [0, 1, 2]


def test_limit_takes_the_first_prompts_only(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"p": "a"}\n{"p": "b"}\n{"p": "c"}\n{"broken\n')
    assert read_prompts(path, key="p", limit=2) == ["a", "b"]  # the broken line 4 is never read
    assert read_prompts(path, key="p", limit=3) == ["a", "b", "c"]
    with pytest.raises(UserError, match=":4: malformed JSON"):
        read_prompts(path, key="p")


@pytest.mark.parametrize(("data", "line", "words"), [
    (b'{"prompt": {"text": "ok"}}\n{"prompt": {"text": "ok"\n', 2, "malformed JSON"),
    (b'{"prompt": {"text": "ok"}}\n{"prompt": {"txt": "no"}}\n', 2, "'prompt.text' is missing"),
    (b'{"prompt": {"text": "ok"}}\n{"prompt": {"text": "  "}}\n', 2, "empty prompt"),
    (b'{"prompt": {"text": "ok"}}\n{"prompt": {"text": "\xff\xfe"}}\n', 2, "not valid UTF-8"),
    (b'{"prompt": {"text": 3}}\n', 1, "expected a string"),
    (b'{"prompt": {"text": "a"}}\n\n{"prompt": {"text": "b"}}\n', 2, "empty line"),
])
def test_bad_input_names_file_and_line(tmp_path: Path, data: bytes, line: int, words: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(UserError) as error:
        read_prompts(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: ") and words in message and "\n" not in message


def test_empty_prompts_only_with_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"prompt": {"text": ""}}\n')
    assert read_prompts(path, allow_empty=True) == [""]
