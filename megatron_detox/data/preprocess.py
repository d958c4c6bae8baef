"""JSONL / text → megatron-core indexed dataset (``P.bin`` + ``P.idx``).

The output is written by megatron-core's ``IndexedDatasetBuilder`` and therefore opens
with ``IndexedDataset`` (ours and Megatron-LM's). Tokenization runs in worker processes;
records keep their input order. A bad record (invalid UTF-8, malformed JSON, missing
key, non-string value) stops the run with ``file:line`` — or, with ``skip_bad``, is
counted and listed in ``P.report.json``. The files only appear, by rename, when every
line was handled, so an interrupted run never leaves a silently shorter dataset.

Formats: ``.jsonl``/``.json`` — one JSON object per line, the text under ``json_key``
(a dotted key such as ``prompt.text`` walks nested objects); anything else is plain
text with one document per non-blank line. Blank lines are not records and are skipped
in both formats.

Loss masks (JSONL only): with ``context_key`` each document is the context's tokens followed
by the text's, and the context carries no loss (the model is conditioned on a prompt, not
trained to write it); with ``ends_key`` a record whose flag is false did not end (a sample cut
at its length limit), so its end-of-document token carries no loss. Either one writes the
per-token mask as a companion dataset ``P.loss_mask.bin/.idx`` (see ``data.loss_mask``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy
from tqdm import tqdm

from megatron_detox.atomic import write_text_atomic
from megatron_detox.data.loss_mask import LOSS_MASK_DTYPE, loss_mask_prefix
from megatron_detox.data.megatron_core import IndexedDatasetBuilder, optimal_dtype
from megatron_detox.diskfull import on_disk_full
from megatron_detox.errors import UserError
from megatron_detox.jsonl import get_dotted
from megatron_detox.tokenizers.base import Tokenizer

CHUNK_LINES = 512
"""Lines per task sent to a worker: large enough to amortize IPC, small for a smooth bar."""


@dataclass
class SkippedLine:
    line: int
    reason: str


@dataclass
class PreprocessReport:
    input: str
    output_prefix: str
    documents: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    """Tokens that carry loss (all of them unless the dataset has a loss mask)."""
    empty_documents: int = 0
    """Records whose text produced no tokens (kept only if ``append_eod`` gives them one)."""
    skipped: list[SkippedLine] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


@dataclass(frozen=True)
class _Document:
    ids: list[int]
    loss_mask: list[int] | None
    """1 where the token carries loss; None: every token does (no mask written)."""


@dataclass(frozen=True)
class _Encoder:
    """Turns one raw line into a document or a reason why it is bad (runs in workers)."""

    tokenizer: Tokenizer
    json_key: str | None
    """None for plain text."""
    append_eod: bool
    context_key: str | None = None
    ends_key: str | None = None

    @property
    def masked(self) -> bool:
        return self.context_key is not None or self.ends_key is not None

    def encode_line(self, raw: bytes) -> _Document | str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"invalid UTF-8 at byte {error.start + 1}"  # 1-based, like JSON columns
        text = text.rstrip("\r\n")
        context, ends = "", True
        if self.json_key is not None:
            record = _parse_record(text)
            if isinstance(record, str):
                return record
            found = _string_field(record, self.json_key)
            if isinstance(found, str):
                return found
            text = found[0]
            if self.context_key is not None:
                found = _string_field(record, self.context_key)
                if isinstance(found, str):
                    return found
                context = found[0]
            if self.ends_key is not None:
                flag = record.get(self.ends_key)
                if not isinstance(flag, bool):
                    return f"key {self.ends_key!r} must be true or false, got {flag!r}"
                ends = flag
        context_ids = self.tokenizer.encode(context) if context else []
        ids = self.tokenizer.encode(text)
        mask = [0] * len(context_ids) + [1] * len(ids)
        ids = context_ids + ids
        if self.append_eod:
            ids.append(self.tokenizer.eod)
            mask.append(int(ends))
        return _Document(ids, mask if self.masked else None)

    def encode_chunk(self, chunk: list[tuple[int, bytes]]) -> list[tuple[int, _Document | str]]:
        return [(line, self.encode_line(raw)) for line, raw in chunk]


def _parse_record(text: str) -> dict[str, Any] | str:
    """The JSON object on the line, or the reason it is not one."""
    try:
        record: Any = json.loads(text)
    except json.JSONDecodeError as error:
        return f"malformed JSON ({error.msg} at column {error.colno})"
    if not isinstance(record, dict):
        return "expected a JSON object"
    return record


def _string_field(record: dict[str, Any], key: str) -> list[str] | str:
    """``[text]`` found under ``key``, or the reason it cannot be found."""
    try:
        value = get_dotted(record, key)
    except KeyError:
        return f"missing key {key!r}"
    if not isinstance(value, str):
        return f"key {key!r} is {type(value).__name__}, expected a string"
    return [value]


# One encoder per worker process, installed by the pool initializer: sending the tokenizer
# with every chunk would pickle the whole vocabulary per task.
_WORKER_ENCODER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _encode_in_worker(chunk: list[tuple[int, bytes]]) -> list[tuple[int, _Document | str]]:
    assert _WORKER_ENCODER is not None, "pool initializer did not run"
    return _WORKER_ENCODER.encode_chunk(chunk)


def _chunks(path: Path) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """(non-blank lines with 1-based numbers, bytes read) in chunks of CHUNK_LINES."""
    chunk: list[tuple[int, bytes]] = []
    nbytes = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            nbytes += len(raw)
            if raw.strip():
                chunk.append((number, raw))
            if len(chunk) >= CHUNK_LINES:
                yield chunk, nbytes
                chunk, nbytes = [], 0
    if chunk or nbytes:
        yield chunk, nbytes


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def preprocess(
    input_path: str | Path,
    output_prefix: str | Path,
    tokenizer: Tokenizer,
    *,
    json_key: str = "text",
    append_eod: bool = True,
    context_key: str | None = None,
    ends_key: str | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> PreprocessReport:
    """Tokenize ``input_path`` into ``output_prefix.bin/.idx`` (and its loss mask); return what was written."""
    source = Path(input_path)
    prefix = str(output_prefix)
    if not source.is_file():
        raise UserError(f"{source}: input file not found")
    encoder = _Encoder(tokenizer, json_key if is_jsonl(source) else None, append_eod, context_key, ends_key)
    if encoder.masked and encoder.json_key is None:
        raise UserError(f"{source}: a context key or an ends key needs JSONL input (.jsonl/.json)")
    if ends_key is not None and not append_eod:
        raise UserError("preprocess: an ends key decides the loss of the end-of-document token; "
                        "it needs the end-of-document token appended")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    report = PreprocessReport(input=str(source), output_prefix=prefix)
    outputs = [_StagedDataset(prefix, optimal_dtype(tokenizer.vocab_size))]
    if encoder.masked:
        outputs.append(_StagedDataset(loss_mask_prefix(prefix), LOSS_MASK_DTYPE))
    try:
        with on_disk_full(prefix + ".bin"), tqdm(total=source.stat().st_size, unit="B", unit_scale=True,
                                                 desc=f"preprocess {source.name}", disable=not progress) as bar:
            for results, nbytes in _encoded_chunks(source, encoder, workers):
                for line, document in results:
                    if isinstance(document, str):
                        if not skip_bad:
                            raise UserError(f"{source}:{line}: {document}; fix the line or pass --skip-bad")
                        report.skipped.append(SkippedLine(line, document))
                        continue
                    _add_document(outputs, document, report)
                bar.update(nbytes)
            for output in outputs:
                output.finalize()
    except BaseException:
        for output in outputs:
            output.discard()
        raise
    # The mask first and the tokens' .idx last: IndexedDataset.exists() needs .bin and .idx,
    # so a crash in between leaves no dataset that looks complete, and never one paired with
    # a stale mask (a dataset written without a mask removes any earlier one).
    if not encoder.masked:
        for suffix in (".idx", ".bin"):
            Path(loss_mask_prefix(prefix) + suffix).unlink(missing_ok=True)
    for output in reversed(outputs):
        output.publish()
    write_text_atomic(Path(prefix + ".report.json"), report.to_json())
    return report


class _StagedDataset:
    """An indexed dataset written under a temporary name, renamed into place by ``publish``."""

    def __init__(self, prefix: str, dtype: type) -> None:
        self.prefix, self.dtype = prefix, dtype
        self.tmp_prefix = f"{prefix}.tmp{os.getpid()}"
        self.builder = IndexedDatasetBuilder(self.tmp_prefix + ".bin", dtype=dtype)

    def add(self, values: list[int]) -> None:
        array: numpy.ndarray = numpy.asarray(values, dtype=self.dtype)  # [tokens]
        self.builder.add_document(array, [array.size])

    def finalize(self) -> None:
        self.builder.finalize(self.tmp_prefix + ".idx")

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes the buffer: on a full disk that fails again
            self.builder.data_file.close()
        for suffix in (".bin", ".idx"):
            Path(self.tmp_prefix + suffix).unlink(missing_ok=True)

    def publish(self) -> None:
        os.replace(self.tmp_prefix + ".bin", self.prefix + ".bin")
        os.replace(self.tmp_prefix + ".idx", self.prefix + ".idx")


def _encoded_chunks(
    source: Path, encoder: _Encoder, workers: int
) -> Iterator[tuple[list[tuple[int, _Document | str]], int]]:
    if workers <= 1:
        for chunk, nbytes in _chunks(source):
            yield encoder.encode_chunk(chunk), nbytes
        return
    # fork: workers inherit the imported tokenizer libraries instead of re-importing them.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        sizes: list[int] = []

        def raw_chunks() -> Iterator[list[tuple[int, bytes]]]:
            for chunk, nbytes in _chunks(source):
                sizes.append(nbytes)
                yield chunk

        # imap keeps input order, so documents land in the file in line order.
        for index, results in enumerate(pool.imap(_encode_in_worker, raw_chunks())):
            yield results, sizes[index]


def _add_document(outputs: list[_StagedDataset], document: _Document, report: PreprocessReport) -> None:
    if not document.ids:
        report.empty_documents += 1
        return
    outputs[0].add(document.ids)
    if document.loss_mask is not None:
        outputs[1].add(document.loss_mask)
    report.documents += 1
    report.tokens += len(document.ids)
    report.loss_tokens += len(document.ids) if document.loss_mask is None else sum(document.loss_mask)
