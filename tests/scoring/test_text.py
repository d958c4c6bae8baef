from __future__ import annotations

import pytest

from megatron_detox.jsonl import get_dotted
from megatron_detox.scoring.text import encode_utf8, text_sha256, truncate_utf8


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "emoji 😀😀😀 end", "a\ud800b"])
def test_truncate_never_splits_a_character(text: str) -> None:
    size = len(encode_utf8(text))
    for limit in range(1, size + 2):
        cut, truncated = truncate_utf8(text, limit)
        assert text.startswith(cut)
        assert len(encode_utf8(cut)) <= limit
        if limit >= size:
            assert (cut, truncated) == (text, None)
        else:
            assert truncated == len(encode_utf8(cut))
            # the cut is maximal: the next character would not fit
            assert len(encode_utf8(text[: len(cut) + 1])) > limit


def test_truncate_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError):
        truncate_utf8("abc", 0)


def test_sha256_distinguishes_lone_surrogates() -> None:
    assert text_sha256("a\ud800") != text_sha256("a\ud801")
    assert text_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_get_dotted() -> None:
    record = {"continuation": {"text": "x"}, "a.b": 1}
    assert get_dotted(record, "continuation.text") == "x"
    assert get_dotted(record, "a.b") == 1
    with pytest.raises(KeyError, match="txt"):
        get_dotted(record, "continuation.txt")
