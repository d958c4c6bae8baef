"""The generation stage: work items -> sharded exactly-once records -> merged file.

Data parallelism is a split of sample ids (rank ``r`` takes ids with ``id % dp == r``);
thanks to per-sample generators the text of an id is the same whatever the split.
Tokenization, files and progress live here; the engine sees token ids only.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from megatron_detox.atomic import write_json_atomic
from megatron_detox.errors import UserError
from megatron_detox.generate.cpu_linears import CpuDecodeLinears, decode_backend
from megatron_detox.generate.cpu_workers import SharedQueue, resolve_cpu_workers, run_in_workers
from megatron_detox.generate.engine import (
    Work,
    WorkQueue,
    decode_one_token,
    generate_batch,
    generate_stream,
    kv_cache_bytes,
)
from megatron_detox.generate.projection import VocabProjection
from megatron_detox.generate.prompts import WorkItem
from megatron_detox.generate.sampling import SamplingParams
from megatron_detox.generate.writer import (
    ShardWriter,
    append_metrics,
    check_run_settings,
    finished_ids,
    merge_shards,
    read_metrics,
    shard_path,
)
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.tokenizers.base import Tokenizer

# Share of free memory the KV cache may take; the rest is for logits and activations.
CACHE_MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class GenerationSpec:
    """What decides the text of every sample id (batch size and layout do not)."""

    params: SamplingParams
    max_new_tokens: int
    seed: int
    vocab_size: int
    """Real vocabulary size; padded logits beyond it are never sampled."""
    head_dim: int
    context_length: int
    stop_ids: tuple[int, ...] = ()

    @classmethod
    def for_model(cls, params: SamplingParams, tokenizer: Tokenizer, cfg: ModelConfig, *, max_new_tokens: int,
                  seed: int, stop_ids: Sequence[int], option: str = "--max-new-tokens") -> GenerationSpec:
        """The spec for ``cfg``'s model and ``tokenizer``; ``max_new_tokens`` (the user's ``option``)
        must leave room for a prompt in the model's context."""
        if max_new_tokens >= cfg.max_position_embeddings:
            raise UserError(f"{option}={max_new_tokens}: the model context is {cfg.max_position_embeddings} "
                            "tokens (prompt included); ask for fewer")
        return cls(params=params, max_new_tokens=max_new_tokens, seed=seed,
                   vocab_size=min(tokenizer.vocab_size, cfg.padded_vocab_size), head_dim=cfg.head_dim,
                   context_length=cfg.max_position_embeddings, stop_ids=tuple(stop_ids))


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Prompt ids; an empty prompt starts from BOS (or EOS, GPT-2 style) alone."""
    if text:
        ids = tokenizer.encode(text)
        if ids:
            return ids
    return [tokenizer.bos if tokenizer.bos is not None else tokenizer.eod]


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory available for new tensors on ``device`` (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def use_cpu_decode_linears(model: Transformer, decode_step: Callable[..., Tensor]) -> bool:
    """Whether a run takes :class:`CpuDecodeLinears`: an eager decode step on CPU where
    :func:`decode_backend` has a path (oneDNN on AVX-512 CPUs; numpy's BLAS elsewhere at
    one thread only), with memory for the copy of the weights it holds while the run lasts.
    """
    param = next(model.parameters())
    if param.device.type != "cpu" or decode_step is not decode_one_token:  # compiled steps keep torch's GEMMs
        return False
    if decode_backend() is None:
        return False
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    free = free_memory_bytes(param.device)
    return free is not None and free > 2 * weights


def decode_linears(model: Transformer, decode_step: Callable[..., Tensor]) -> contextlib.AbstractContextManager[Any]:
    """What a run holds for its decode steps: :class:`CpuDecodeLinears` where
    :func:`use_cpu_decode_linears` says so, else nothing."""
    if use_cpu_decode_linears(model, decode_step):
        return CpuDecodeLinears(model, exclude=(model.output,))
    return contextlib.nullcontext()


def fit_batch_size(model: Transformer, head_dim: int, batch_size: int, max_len: int,
                   budget_bytes: int | None) -> int:
    """The largest batch <= ``batch_size`` whose KV cache fits ``budget_bytes``."""
    if budget_bytes is None:
        return batch_size
    per_row = kv_cache_bytes(model, head_dim, 1, max_len)
    if per_row > budget_bytes:
        raise UserError(f"--max-new-tokens: one sample of {max_len} tokens needs {per_row / 2**20:.0f} MiB of KV "
                        f"cache, more than the {budget_bytes / 2**20:.0f} MiB available; generate fewer tokens")
    return max(1, min(batch_size, budget_bytes // per_row))


def complete(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[str], spec: GenerationSpec,
             sample_ids: Sequence[int] | None = None,
             decode_step: Callable[..., Tensor] = decode_one_token) -> list[str]:
    """Continuations of ``prompts`` (one batch; ids default to 0..n-1)."""
    ids = list(sample_ids) if sample_ids is not None else list(range(len(prompts)))
    out = generate_batch(model, [encode_prompt(tokenizer, p) for p in prompts], ids, spec.params,
                         max_new_tokens=spec.max_new_tokens, vocab_size=spec.vocab_size, head_dim=spec.head_dim,
                         stop_ids=spec.stop_ids, seed=spec.seed, decode_step=decode_step)
    return [tokenizer.decode(g.tokens) for g in out]


def run_generation_stage(
    model: Transformer,
    tokenizer: Tokenizer,
    items: Sequence[WorkItem],
    out_dir: str | Path,
    spec: GenerationSpec,
    *,
    settings: dict[str, Any],
    batch_size: int,
    dp_rank: int = 0,
    dp_size: int = 1,
    writer_rank: bool = True,
    merger_rank: bool = True,
    barrier: Callable[[], None] | None = None,
    decode_step: Callable[..., Tensor] = decode_one_token,
    memory_budget_bytes: int | None = None,
    progress: bool = True,
    agree_batch_size: Callable[[int], int] | None = None,
    cpu_workers: int = 0,
) -> Path | None:
    """Generate every item not yet in ``out_dir``; rank 0 merges. Returns the merged file on rank 0.

    ``settings`` (model, seed, sampling, source of the items) goes to ``run.json`` and the
    manifest; a rerun with different settings is refused. With tensor parallelism every
    rank of a DP group runs the engine (it takes part in the collectives) but only one
    (``writer_rank``) writes; ``merger_rank`` (global rank 0) merges. ``barrier``
    synchronizes all ranks (None for a single process). ``agree_batch_size`` (a collective
    minimum over all ranks, see ``generate.parallel.min_over_ranks``) makes the ranks that
    run one forward together use one batch size, whatever memory each one has.

    ``cpu_workers`` (see ``generate.cpu_workers.resolve_cpu_workers``; 0: one per CPU
    thread) splits a single-process CPU run over forked one-thread processes, each a
    data-parallel rank with its share of the batch; the text of an id does not change.
    """
    out = Path(out_dir)
    if writer_rank:
        check_run_settings(out, settings)
    if barrier is not None:
        barrier()  # run.json exists before anyone reads shards
    done = finished_ids(out)
    if barrier is not None:
        barrier()  # every rank of a TP group saw the same finished ids before any writer appends
    mine = [item for item in items if item.id % dp_size == dp_rank and item.id not in done]
    encoded = {item.id: encode_prompt(tokenizer, item.prompt) for item in mine}
    for item in mine:
        if len(encoded[item.id]) + spec.max_new_tokens > spec.context_length:
            line = f"line {item.prompt_index + 1}" if item.prompt_index is not None else f"sample {item.id}"
            raise UserError(f"{line}: the prompt has {len(encoded[item.id])} tokens; with --max-new-tokens "
                            f"{spec.max_new_tokens} it exceeds the model context of {spec.context_length}")
    # Similar lengths in a row: they prefill together and a decode step's mask hides few slots.
    mine.sort(key=lambda item: (len(encoded[item.id]), item.id))

    device = next(model.parameters()).device
    longest = max((len(ids) for ids in encoded.values()), default=1) + spec.max_new_tokens
    budget = memory_budget_bytes
    if budget is None:
        free = free_memory_bytes(device)
        budget = int(free * CACHE_MEMORY_FRACTION) if free is not None else None
    # What memory allows, agreed on before the work split caps it: TP/PP peers hold the
    # same items, so after the agreement they cap to the same number too.
    try:
        fitted = fit_batch_size(model, spec.head_dim, batch_size, longest, budget)
        refused: UserError | None = None
    except UserError as error:  # still join the agreement, so no peer waits for this rank forever
        fitted, refused = 0, error
    if agree_batch_size is not None:
        fitted = agree_batch_size(fitted)
    if fitted == 0:
        raise refused or UserError("--max-new-tokens: another rank has no memory for the KV cache of one sample; "
                                   "generate fewer tokens")
    fitted = min(fitted, max(len(mine), 1))
    workers = resolve_cpu_workers(cpu_workers, device, single_process=dp_size == 1 and barrier is None,
                                  eager=decode_step is decode_one_token, num_items=len(mine))
    per_worker = -(-fitted // workers)
    if writer_rank and mine:  # the cache size is reported up front, progress bar or not
        layout = (f"batch {fitted}" if workers == 1 else
                  f"{workers} processes of {max(1, torch.get_num_threads() // workers)} thread(s) x batch {per_worker}")
        print(f"generate: rank {dp_rank}: {len(mine)} samples to do ({len(done)} already done); KV cache "
              f"{kv_cache_bytes(model, spec.head_dim, fitted, longest) / 2**20:.1f} MiB for {layout} x "
              f"{longest} tokens" + (f" (--batch-size {batch_size} split to fit memory)" if fitted < min(batch_size, len(mine)) else ""),
              file=sys.stderr)
    decode = _RankDecoder(model, tokenizer, spec, encoded, out, decode_step)
    if workers == 1:
        decode(mine, rank=dp_rank, batch_size=fitted, write=writer_rank, progress=progress and writer_rank)
    else:  # worker w is DP rank w of this single-process run: its own shard, samples from one queue
        queue = SharedQueue(decode.work(mine))
        run_in_workers(workers, lambda w: decode(mine, rank=w, batch_size=per_worker, write=True,
                                                 progress=progress and w == 0, queue=queue))
    if barrier is not None:
        barrier()
    if not merger_rank:
        return None
    merged = merge_shards(out, len(items))
    write_manifest(out, settings, merged, dp_size * workers)
    return merged


class _RankDecoder:
    """The decode loop of one data-parallel rank: its items -> records appended to its shard."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, spec: GenerationSpec,
                 encoded: dict[int, list[int]], out: Path, decode_step: Callable[..., Tensor]) -> None:
        self.model, self.tokenizer, self.spec, self.encoded = model, tokenizer, spec, encoded
        self.out, self.decode_step = out, decode_step

    def work(self, items: Sequence[WorkItem]) -> list[Work]:
        """The engine's ``(sample_id, prompt ids)`` of ``items``."""
        return [(item.id, self.encoded[item.id]) for item in items]

    def __call__(self, items: Sequence[WorkItem], *, rank: int, batch_size: int, write: bool,
                 progress: bool, queue: WorkQueue | None = None) -> None:
        """Generate ``items`` (those ``queue`` hands this rank, if given)."""
        model, spec = self.model, self.spec
        writer = ShardWriter(shard_path(self.out, rank)) if write else None
        # From a shared queue a rank's share is not known in advance: the bar counts without a total.
        bar = tqdm(total=len(items) if queue is None else None, unit="sample", disable=not progress,
                   desc=f"generate rank {rank}")
        projection = VocabProjection(model.output)  # one prepacked output weight for every batch
        fast_linears = decode_linears(model, self.decode_step)
        items_by_id = {item.id: item for item in items}
        sink = _RecordSink(writer, self.out, rank, bar)
        try:
            with fast_linears:
                # Continuous batching: a finished row takes the next sample at once. Finished
                # samples are written (and fsynced) in groups of a batch.
                for g in generate_stream(
                    model, self.work(items), spec.params,
                    batch_size=batch_size, max_new_tokens=spec.max_new_tokens, vocab_size=spec.vocab_size,
                    head_dim=spec.head_dim, stop_ids=spec.stop_ids, seed=spec.seed, decode_step=self.decode_step,
                    projection=projection, queue=queue,
                ):
                    item = items_by_id[g.sample_id]
                    sink.add({"id": item.id, "prompt_index": item.prompt_index, "sample_index": item.sample_index,
                              "prompt": item.prompt, "text": self.tokenizer.decode(g.tokens),
                              "num_tokens": len(g.tokens), "finish_reason": g.finish_reason},
                             # Tokens actually computed: an EOS counts, it cost a step like any other token.
                             len(g.tokens) + (g.finish_reason == "eos"))
                    if sink.size >= batch_size:
                        sink.flush()
                sink.flush()
        finally:
            bar.close()
            if writer is not None:
                writer.close()


class _RecordSink:
    """Finished records of one rank, appended (and fsynced) to its shard in groups, with
    one metrics line per group."""

    def __init__(self, writer: ShardWriter | None, out: Path, dp_rank: int, bar: tqdm) -> None:
        self.writer, self.out, self.dp_rank, self.bar = writer, out, dp_rank, bar
        self.records: list[dict[str, Any]] = []
        self.tokens = self.total_tokens = 0
        self.started = self.since = time.perf_counter()

    @property
    def size(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any], tokens: int) -> None:
        self.records.append(record)
        self.tokens += tokens

    def flush(self) -> None:
        if self.writer is not None and self.records:
            self.writer.append(self.records)
            now = time.perf_counter()
            seconds = now - self.since
            self.total_tokens += self.tokens
            append_metrics(self.out, self.dp_rank, {"rank": self.dp_rank, "samples": len(self.records),
                                                    "tokens": self.tokens, "seconds": seconds,
                                                    "tokens_per_s": self.tokens / seconds})
            self.bar.update(len(self.records))
            self.bar.set_postfix(tokens_per_s=f"{self.total_tokens / (now - self.started):.1f}")
        self.records.clear()
        self.tokens, self.since = 0, time.perf_counter()


def write_manifest(out: Path, settings: dict[str, Any], merged: Path, dp_size: int) -> None:
    counts = {"samples": 0, "tokens": 0, "eos": 0, "length": 0}
    with merged.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            counts["samples"] += 1
            counts["tokens"] += int(record["num_tokens"])
            counts[record["finish_reason"]] += 1
    per_rank: dict[int, list[float]] = {}
    for m in read_metrics(out):
        tokens_seconds = per_rank.setdefault(int(m["rank"]), [0.0, 0.0])
        tokens_seconds[0] += m["tokens"]
        tokens_seconds[1] += m["seconds"]
    # Ranks run concurrently: the job's rate is the sum of the per-rank rates.
    rate = sum(t / s for t, s in per_rank.values() if s > 0)
    write_json_atomic(out / "manifest.json", {**settings, "counts": counts, "dp_size": dp_size,
                                              "tokens_per_s": rate, "output": merged.name})
