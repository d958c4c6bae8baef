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
    empty_documents: int = 0
    """Records whose text produced no tokens (kept only if ``append_eod`` gives them one)."""
    skipped: list[SkippedLine] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


@dataclass(frozen=True)
class _Encoder:
    """Turns one raw line into token ids or a reason why it is bad (runs in workers)."""

    tokenizer: Tokenizer
    json_key: str | None
    """None for plain text."""
    append_eod: bool

    def encode_line(self, raw: bytes) -> list[int] | str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"invalid UTF-8 at byte {error.start + 1}"  # 1-based, like JSON columns
        text = text.rstrip("\r\n")
        if self.json_key is not None:
            value = _extract_text(text, self.json_key)
            if not isinstance(value, list):
                return value
            text = value[0]
        ids = self.tokenizer.encode(text)
        if self.append_eod:
            ids.append(self.tokenizer.eod)
        return ids

    def encode_chunk(self, chunk: list[tuple[int, bytes]]) -> list[tuple[int, list[int] | str]]:
        return [(line, self.encode_line(raw)) for line, raw in chunk]


def _extract_text(text: str, key: str) -> list[str] | str:
    """``[text]`` found under ``key`` in the JSON line, or the reason it cannot be found."""
    try:
        record: Any = json.loads(text)
    except json.JSONDecodeError as error:
        return f"malformed JSON ({error.msg} at column {error.colno})"
    if not isinstance(record, dict):
        return f"expected a JSON object with key {key!r}"
    try:
        record = get_dotted(record, key)
    except KeyError:
        return f"missing key {key!r}"
    if not isinstance(record, str):
        return f"key {key!r} is {type(record).__name__}, expected a string"
    return [record]


# One encoder per worker process, installed by the pool initializer: sending the tokenizer
# with every chunk would pickle the whole vocabulary per task.
_WORKER_ENCODER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _encode_in_worker(chunk: list[tuple[int, bytes]]) -> list[tuple[int, list[int] | str]]:
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
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> PreprocessReport:
    """Tokenize ``input_path`` into ``output_prefix.bin/.idx``; return what was written."""
    source = Path(input_path)
    prefix = str(output_prefix)
    if not source.is_file():
        raise UserError(f"{source}: input file not found")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    encoder = _Encoder(tokenizer, json_key if is_jsonl(source) else None, append_eod)
    report = PreprocessReport(input=str(source), output_prefix=prefix)
    tmp_prefix = f"{prefix}.tmp{os.getpid()}"
    dtype = optimal_dtype(tokenizer.vocab_size)
    builder = IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=dtype)
    try:
        with on_disk_full(prefix + ".bin"), tqdm(total=source.stat().st_size, unit="B", unit_scale=True,
                                                 desc=f"preprocess {source.name}", disable=not progress) as bar:
            for results, nbytes in _encoded_chunks(source, encoder, workers):
                for line, ids in results:
                    if isinstance(ids, str):
                        if not skip_bad:
                            raise UserError(f"{source}:{line}: {ids}; fix the line or pass --skip-bad")
                        report.skipped.append(SkippedLine(line, ids))
                        continue
                    _add_document(builder, ids, dtype, report)
                bar.update(nbytes)
            builder.finalize(tmp_prefix + ".idx")
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes the buffer: on a full disk that fails again
            builder.data_file.close()
        for suffix in (".bin", ".idx"):
            Path(tmp_prefix + suffix).unlink(missing_ok=True)
        raise
    # .bin first, .idx last: IndexedDataset.exists() needs both, so a crash in between
    # leaves no dataset that looks complete.
    os.replace(tmp_prefix + ".bin", prefix + ".bin")
    os.replace(tmp_prefix + ".idx", prefix + ".idx")
    write_text_atomic(Path(prefix + ".report.json"), report.to_json())
    return report


def _encoded_chunks(
    source: Path, encoder: _Encoder, workers: int
) -> Iterator[tuple[list[tuple[int, list[int] | str]], int]]:
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


def _add_document(builder: IndexedDatasetBuilder, ids: list[int], dtype: type, report: PreprocessReport) -> None:
    if not ids:
        report.empty_documents += 1
        return
    array: numpy.ndarray = numpy.asarray(ids, dtype=dtype)  # [tokens]
    builder.add_document(array, [array.size])
    report.documents += 1
    report.tokens += int(array.size)
