"""The tokenizer a GGUF file describes in its ``tokenizer.ggml.*`` metadata.

A GGUF has no ``tokenizer.json``; llama.cpp stores the vocabulary, merges, token types
and special ids as metadata. We rebuild the equivalent ``tokenizers.Tokenizer`` the
way transformers' GGUF converter does (``integrations/gguf/gguf_tokenizer_mapping.py``):

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE from tokens + merges; the split
  regex comes from ``tokenizer.ggml.pre`` (GPT-2's own regex unless the table below
  names another one).
- ``tokenizer.ggml.model == "llama"``: sentencepiece-style BPE with byte fallback,
  merges from the file or recovered from the token scores. Unlike transformers we
  always prepend the dummy-prefix space, as sentencepiece and llama.cpp do.

Tokens typed CONTROL become special added tokens and USER_DEFINED plain added tokens,
so that text like ``<|im_end|>`` stays one token, as llama.cpp does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers

from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import HFTokenizer, first_line, require_file

# llama.cpp's token types (the same numbering as sentencepiece's piece types).
_CONTROL, _USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ``tokenizer.ggml.pre`` -> split regex, as in transformers' GGUF_PRE_TOKENIZER_SPLITS.
# Values listed in _GPT2_SPLIT_PRES keep ByteLevel's built-in GPT-2 regex.
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# transformers builds these with GPT-2's regex. (llama.cpp also splits digits one by
# one for "smollm"/"starcoder"; SmolLM2's vocabulary has no digit merges, so the ids
# agree on digits either way.)
_GPT2_SPLIT_PRES = frozenset({"default", "gpt2", "gpt-2", "smollm", "starcoder", "refact"})


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The file's ``general.*`` and ``tokenizer.*`` metadata as plain Python values.

    ``GGUFReader`` memory-maps the file, so tensor data is never read here.
    """
    import gguf  # imported late: it pulls in numpy machinery most commands never need

    require_file(path, "GGUF file")
    try:
        reader = gguf.GGUFReader(path, "r")
        return {
            key: field.contents() for key, field in reader.fields.items() if key.startswith(("general.", "tokenizer."))
        }
    except Exception as error:  # any parse failure means a bad file, not a bug here
        raise UserError(
            f"{path}: not a readable GGUF file ({type(error).__name__}: {first_line(error)}); "
            "re-download it or pass another model file"
        ) from error


def load_gguf_tokenizer(path: str | Path) -> HFTokenizer:
    """Build the tokenizer embedded in the GGUF file at ``path``."""
    path = Path(path)
    meta = read_gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UserError(f"{path}: GGUF file has no tokenizer.ggml.tokens; use a GGUF with an embedded tokenizer")
    if kind == "gpt2":
        backend = _byte_level_bpe(meta, path)
    elif kind == "llama":
        backend = _sentencepiece_bpe(meta, path)
    else:
        raise UserError(
            f"{path}: GGUF tokenizer.ggml.model={kind!r} is not supported (supported: 'gpt2', 'llama'); "
            "pass a tokenizer.json, vocab.json+merges.txt or sentencepiece .model instead"
        )
    _add_typed_tokens(backend, meta, byte_level=kind == "gpt2")
    eod = meta.get("tokenizer.ggml.eos_token_id")
    if eod is None:
        raise UserError(f"{path}: GGUF has no tokenizer.ggml.eos_token_id; pass a tokenizer with an EOS token")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    for key, index in (("eos", eod), ("bos", bos)):
        if index is not None and not 0 <= int(index) < len(tokens):
            raise UserError(
                f"{path}: GGUF tokenizer.ggml.{key}_token_id={index} is outside the vocabulary; fix the file"
            )
    name = str(meta.get("general.name") or path.stem)
    return HFTokenizer(name=f"gguf:{name}", backend=backend, eod=int(eod), bos=None if bos is None else int(bos))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (byte for byte in range(256) if byte not in printable)
    mapping = {byte: chr(byte) for byte in printable}
    for offset, byte in enumerate(extra):
        mapping[byte] = chr(256 + offset)
    return dict(sorted(mapping.items()))


def _byte_level_bpe(meta: dict[str, Any], path: Path) -> tokenizers.Tokenizer:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens are stored in the byte alphabet already; a control token spelled otherwise
    # (a llama.cpp quirk) is respelled so the BPE model accepts it, as transformers does.
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(meta["tokenizer.ggml.tokens"])
    }
    merges = _merges(meta, path)
    backend = _bpe(path, vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    pre = meta.get("tokenizer.ggml.pre", "default")
    split = PRE_TOKENIZER_SPLITS.get(pre)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        if pre not in _GPT2_SPLIT_PRES:
            warnings.warn(
                f"{path}: unknown tokenizer.ggml.pre={pre!r}; splitting text with GPT-2's regex",
                stacklevel=3,
            )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(meta: dict[str, Any], path: Path) -> tokenizers.Tokenizer:
    """Sentencepiece BPE: ``▁`` for spaces, ``<0xNN>`` byte fallback, score-ordered merges."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _merges(meta, path) if "tokenizer.ggml.merges" in meta else _merges_from_scores(meta, vocab, path)
    backend = _bpe(path, vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # A normalizer, not ``Metaspace``: sentencepiece and llama.cpp always prepend the
    # dummy space, while ``Metaspace`` skips it when the text already starts with one.
    steps = [normalizers.Prepend("▁")] if prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(decode_steps)
    return backend


def _bpe(path: Path, **options: Any) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer(tokenizers.models.BPE(**options))
    except Exception as error:  # e.g. a merge naming a token that is not in the vocabulary
        raise UserError(
            f"{path}: GGUF tokenizer metadata is inconsistent ({first_line(error)}); the file is corrupt"
        ) from error


def _merges(meta: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise UserError(f"{path}: GGUF byte-level tokenizer has no tokenizer.ggml.merges; the file is incomplete")
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, space, right = merge.partition(" ")
        if not space or not left or not right or " " in right:
            raise UserError(
                f"{path}: GGUF merge {merge!r} is not two tokens separated by one space; the file is corrupt"
            )
        pairs.append((left, right))
    return pairs


def _merges_from_scores(meta: dict[str, Any], vocab: dict[str, int], path: Path) -> list[tuple[str, str]]:
    """Recover sentencepiece merges: every split of a token into two tokens, best score first.

    Same order as transformers' ``generate_merges``: by the merged token's score
    (descending), then by piece lengths, ties by the pieces' ids.
    """
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(vocab):
        raise UserError(f"{path}: GGUF sentencepiece tokenizer needs one tokenizer.ggml.scores entry per token")
    ranked: list[tuple[str, str, float]] = []
    for token, score in zip(meta["tokenizer.ggml.tokens"], scores):
        local = [
            (token[:cut], token[cut:], float(score))
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        ranked.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _add_typed_tokens(backend: tokenizers.Tokenizer, meta: dict[str, Any], byte_level: bool) -> None:
    """CONTROL tokens -> special added tokens; USER_DEFINED -> plain added tokens."""
    types = meta.get("tokenizer.ggml.token_type") or []
    alphabet = set(bytes_to_unicode().values())
    control, user = [], []
    for token, token_type in zip(meta["tokenizer.ggml.tokens"], types):
        if token_type == _CONTROL and (not byte_level or set(token) <= alphabet):
            control.append(AddedToken(token, normalized=False, special=True))
        elif token_type == _USER_DEFINED and backend.token_to_id(token) is not None:
            user.append(AddedToken(token, normalized=False, special=False))
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)
