"""Scoring records in order, exactly once per distinct text, resumable through the cache.

``score_records`` streams records through a scorer: texts are looked up in the
cache, distinct uncached texts are batched to ``workers`` threads (they share
the scorer, and so its rate limiter), each finished batch is committed to the
cache, and records come out in input order with these keys added:

* ``scorer``: ``{"name", "version"}`` of the scorer;
* ``scores``: lower-case attribute -> float, when scored;
* ``truncated_bytes``: bytes actually scored, when the text had to be cut;
* ``score_error``: the reason, when not scored (retryable ones are retried by
  the next run; stale keys from an earlier scoring are replaced).

``score_file`` does the same from a JSONL file into ``<output>.tmp``, renamed
when complete; after a ``kill -9`` the same command resumes from the cache.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from megatron_detox.atomic import atomic_output
from megatron_detox.errors import UserError
from megatron_detox.jsonl import get_dotted, iter_jsonl
from megatron_detox.scoring.base import EMPTY_TEXT_ERROR, ScoreOutcome, Scorer
from megatron_detox.scoring.cache import ScoreCache, attributes_key
from megatron_detox.scoring.records import check_distinct, count_lines, dump_record
from megatron_detox.scoring.text import text_sha256

OUTPUT_KEYS = ("scores", "scorer", "score_error", "truncated_bytes")


@dataclass
class ScoreSummary:
    """Counts for one scoring run (records, not distinct texts, unless noted)."""

    num_records: int = 0
    num_scored: int = 0
    num_errors: int = 0
    num_retryable_errors: int = 0
    num_from_cache: int = 0
    num_texts_sent: int = 0  # distinct texts handed to the scorer this run
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Item:
    location: str
    record: Mapping[str, Any]
    sha: str | None = None
    outcome: ScoreOutcome | None = None
    from_cache: bool = False


def extract_text(record: Mapping[str, Any], text_key: str, location: str) -> str:
    """The text at ``text_key`` (dotted path); ``UserError`` naming location and field."""
    try:
        value = get_dotted(record, text_key)
    except KeyError as missing:
        fields = ", ".join(sorted(map(str, record)))[:200]
        raise UserError(
            f"{location}: field {text_key!r} is missing (no {missing}); pass --text-key with one of: {fields}"
        ) from None
    if not isinstance(value, str):
        raise UserError(
            f"{location}: field {text_key!r} is {type(value).__name__}, expected a string: "
            "fix the record or pass another --text-key"
        )
    return value


def attach_outcome(record: Mapping[str, Any], outcome: ScoreOutcome, scorer: Scorer) -> dict[str, Any]:
    """A copy of ``record`` with the scoring keys set (and stale ones removed)."""
    out = {key: value for key, value in record.items() if key not in OUTPUT_KEYS}
    out["scorer"] = scorer.info
    if outcome.scores is not None:
        out["scores"] = outcome.scores
        if outcome.truncated_bytes is not None:
            out["truncated_bytes"] = outcome.truncated_bytes
    else:
        out["score_error"] = outcome.error
    return out


def score_records(
    records: Iterable[Mapping[str, Any]],
    scorer: Scorer,
    cache: ScoreCache | None = None,
    text_key: str = "text",
    *,
    workers: int = 1,
    source: str = "<records>",
    progress: bool = False,
    summary: ScoreSummary | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield each record with scores attached, in input order (see module docstring).

    ``cache=None`` uses an in-memory cache (deduplication within the run only).
    Locations in errors read ``<source>:<record number>``.
    """
    items = ((f"{source}:{number}", record) for number, record in enumerate(records, start=1))
    yield from _score_stream(items, scorer, cache, text_key, workers, progress, summary, None)


def score_file(
    input_path: str | Path,
    output_path: str | Path,
    scorer: Scorer,
    cache: ScoreCache | None = None,
    text_key: str = "text",
    *,
    workers: int = 1,
    progress: bool = True,
) -> ScoreSummary:
    """Score a JSONL file into ``output_path`` (atomic); rerun after a kill to resume."""
    check_distinct(input_path, output_path)
    summary = ScoreSummary()
    items = ((f"{input_path}:{number}", record) for number, record in iter_jsonl(input_path))
    total = count_lines(input_path)
    with atomic_output(output_path) as handle:
        for record in _score_stream(items, scorer, cache, text_key, workers, progress, summary, total):
            handle.write(dump_record(record))
    return summary


def _score_stream(
    items: Iterable[tuple[str, Mapping[str, Any]]],
    scorer: Scorer,
    cache: ScoreCache | None,
    text_key: str,
    workers: int,
    progress: bool,
    summary: ScoreSummary | None,
    total: int | None,
) -> Iterator[dict[str, Any]]:
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    own_cache = cache is None
    cache = cache if cache is not None else ScoreCache(None)
    summary = summary if summary is not None else ScoreSummary()
    namespace, attributes = scorer.cache_namespace, attributes_key(scorer.attributes)
    batch_size = max(1, scorer.batch_size)
    max_inflight = 2 * workers
    readahead = max(1024, 4 * workers * batch_size)

    queue: deque[_Item] = deque()
    resolved: dict[str, ScoreOutcome] = {}  # outcomes of texts still queued, and run failures
    refcount: Counter[str] = Counter()
    inflight: dict[Future[list[ScoreOutcome]], list[tuple[str, str]]] = {}
    pending: set[str] = set()  # buffered or in flight
    from_cache: set[str] = set()  # texts in ``resolved`` that came from the cache
    buffer: list[tuple[str, str]] = []
    source = iter(items)
    exhausted = False
    started = time.monotonic()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer")
    bar = tqdm(total=total or None, unit="text", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    failed_cleanly = False

    def submit() -> None:
        batch = list(buffer)
        buffer.clear()
        inflight[executor.submit(scorer.score_detailed, [text for _, text in batch])] = batch
        summary.num_texts_sent += len(batch)

    try:
        while True:
            while not exhausted and len(queue) < readahead and len(inflight) < max_inflight:
                try:
                    location, record = next(source)
                except StopIteration:
                    exhausted = True
                    break
                item = _Item(location, record)
                queue.append(item)
                text = extract_text(record, text_key, location)
                if not text.strip():
                    item.outcome = ScoreOutcome.failure(EMPTY_TEXT_ERROR, retryable=False)
                    continue
                item.sha = sha = text_sha256(text)
                refcount[sha] += 1
                if sha in resolved or sha in pending:
                    item.from_cache = sha in from_cache
                    continue
                cached = cache.get(namespace, attributes, sha)
                if cached is not None:
                    resolved[sha] = cached
                    from_cache.add(sha)
                    item.from_cache = True
                    continue
                buffer.append((sha, text))
                pending.add(sha)
                if len(buffer) >= batch_size:
                    submit()
            if buffer and (exhausted or len(queue) >= readahead or len(inflight) < workers):
                submit()

            while queue and (queue[0].outcome is not None or queue[0].sha in resolved):
                head = queue.popleft()
                yield _emit(head, resolved, refcount, scorer, summary, bar)
                if head.sha is not None and head.sha not in resolved:
                    from_cache.discard(head.sha)
            if not queue and exhausted:
                break
            if queue:
                # The head waits on a text in flight (a buffered head was submitted above).
                assert inflight, "head of queue is neither resolved nor in flight"
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    batch = inflight.pop(future)
                    outcomes = future.result()
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"{scorer!r} returned {len(outcomes)} outcomes for {len(batch)} texts")
                    cache.put_many(namespace, attributes, zip((sha for sha, _ in batch), outcomes))
                    for (sha, _), outcome in zip(batch, outcomes):
                        resolved[sha] = outcome
                        pending.discard(sha)
        failed_cleanly = True
    finally:
        summary.elapsed_s += time.monotonic() - started
        bar.close()
        executor.shutdown(wait=failed_cleanly, cancel_futures=True)
        if own_cache:
            cache.close()


def _emit(
    item: _Item,
    resolved: dict[str, ScoreOutcome],
    refcount: Counter[str],
    scorer: Scorer,
    summary: ScoreSummary,
    bar: tqdm,  # type: ignore[type-arg]
) -> dict[str, Any]:
    outcome = item.outcome
    if outcome is None:
        assert item.sha is not None
        outcome = resolved[item.sha]
        refcount[item.sha] -= 1
        if refcount[item.sha] == 0:
            del refcount[item.sha]
            # Final outcomes are in the cache now; keep run failures so a duplicate
            # later in the input is not sent again within this run.
            if outcome.ok or not outcome.retryable:
                del resolved[item.sha]
    summary.num_records += 1
    summary.num_from_cache += item.from_cache
    if outcome.ok:
        summary.num_scored += 1
    else:
        summary.num_errors += 1
        summary.num_retryable_errors += outcome.retryable
        bar.set_postfix(errors=summary.num_errors, refresh=False)
    bar.update(1)
    return attach_outcome(item.record, outcome, scorer)
