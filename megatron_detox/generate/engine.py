"""Continuously batched generation with a preallocated KV cache (gpt-fast style), token ids only.

Each cache row holds one sample at a time: its prompt in slots ``[P, P + n)`` (``P``
prefix slots first, see below), then one slot per decoded token, so every row has its
own length and positions (slot minus ``P``). A decode step writes each row at its own
slot (:class:`GenerationCache`) and a key mask ``[batch, 1, 1, max_len]`` hides what a
row has not written; when every row has the same length no mask is needed.

When a row finishes (a stop id or ``max_new_tokens``) the next pending sample is
prefilled into it right away, so the batch stays full until the queue drains
(vLLM-style continuous batching); only then are finished rows compacted out. Prompts
are prefilled in groups of equal length, without padding, in a scratch cache whose
slots are copied into the rows. Every sample draws from its own generator, so its text
depends on the seed, its id and the model only, not on the batch size or on when it
entered the batch.

Prefix tuning (``peft.prefix``): a model with ``P = prefix_length(model) > 0`` keeps its
prefix keys/values in every row's first ``P`` slots (:func:`fill_prefix_cache`), while
positions stay as without prefix (the prefix has no position); with ``P == 0`` none of
this costs anything.

The engine only calls ``model(tokens, positions, mask, cache, cache_pos)``: a
tensor-parallel (DTensor) model works unchanged as long as the cache holds the local
key/value heads, which :func:`local_kv_heads` reads from the ``k_proj`` shard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from megatron_detox.generate.projection import VocabProjection, output_detached
from megatron_detox.generate.sampling import SamplingParams, draw_uniforms, sample_generator, sample_next
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.peft.prefix import fill_prefix_cache, prefix_length

FinishReason = str  # "eos" | "length"
# Once the queue is empty, compact the batch (drop finished rows from cache and inputs)
# when this fraction of the rows has finished; copying the cache on every finish would cost more.
COMPACT_FRACTION = 0.25
# Attention row by row (where enabled, see attention_by_row) pays only when rows would
# read at least this many unneeded slots each on average in one masked call: a call per
# row costs about what reading ~80 more slots does (SmolLM2 shapes, one CPU thread).
BY_ROW_MIN_MEAN_GAP = 128


Work = tuple[int, Sequence[int]]
"""``(sample_id, prompt token ids)``."""


class WorkQueue(Protocol):
    """Where a continuous batch takes its next samples from."""

    def take(self, n: int) -> list[Work]:
        """Up to ``n`` samples, each handed out once; fewer (or none) when the queue runs dry."""

    def __bool__(self) -> bool:
        """Whether samples may be left (a later ``take`` can still come back empty)."""


class InOrder:
    """The samples of one call, in the order given."""

    def __init__(self, work: Sequence[Work]) -> None:
        self._pending = deque(work)

    def take(self, n: int) -> list[Work]:
        return [self._pending.popleft() for _ in range(min(n, len(self._pending)))]

    def __bool__(self) -> bool:
        return bool(self._pending)


class GenerationCache(KVCache):
    """A KV cache whose ``update`` returns only the slots ``[0, length)``.

    The engine sets ``length`` before each forward. With ``write_slots`` None the call
    writes slots ``[length - seq, length)`` of every row as plain slices (prefill, and
    decode steps where all rows have the same length); with ``write_slots`` (``[batch]``
    long) a one-token call writes row ``b`` at slot ``write_slots[b]``. Attention gets
    ``[batch, length, kv_heads, head_dim]`` views; the engine's mask, if any, is
    ``[batch, 1, seq, length]``.
    """

    length: int = 0
    write_slots: Tensor | None = None
    attend_lengths: list[int] | None = None

    def row_lengths(self) -> list[int] | None:
        return self.attend_lengths

    def update(self, layer_id: int, cache_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.keys[layer_id], self.values[layer_id]
        if self.write_slots is None:
            start = self.length - k.shape[1]
            keys[:, :, start:self.length] = k.transpose(1, 2)  # a slice copy costs a fraction of index_copy_
            values[:, :, start:self.length] = v.transpose(1, 2)
        else:
            rows = torch.arange(keys.shape[0], device=keys.device)
            keys[rows, :, self.write_slots] = k[:, 0]  # [batch, kv_heads, head_dim]
            values[rows, :, self.write_slots] = v[:, 0]
        return keys[:, :, : self.length], values[:, :, : self.length]

    def default_mask(self, cache_pos: Tensor, kv_len: int) -> Tensor | None:
        return None if cache_pos.numel() == 1 else super().default_mask(cache_pos, kv_len)

    def keep_rows(self, rows: Tensor) -> None:
        """Drop every batch row not in ``rows`` (``[new_batch]`` indices)."""
        for store in (self.keys, self.values):
            for layer_id, buffer in store.items():
                store[layer_id] = buffer.index_select(0, rows)
        self.batch_size = int(rows.numel())

    def copy_rows_from(self, rows: Tensor, source: GenerationCache, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` of ``source``'s rows become those of our ``rows`` (``[source batch]``)."""
        for ours, theirs in ((self.keys, source.keys), (self.values, source.values)):
            for layer_id, buffer in ours.items():
                buffer[rows, :, start:stop] = theirs[layer_id][:, :, start:stop]


@dataclass
class Generation:
    """One finished sample: the new token ids (EOS not included) and why it stopped."""

    sample_id: int
    tokens: list[int]
    finish_reason: FinishReason


def local_kv_heads(model: Transformer, head_dim: int) -> int:
    """Key/value heads held by this process (fewer on a tensor-parallel shard)."""
    layer = next(iter(model.layers.values()))
    weight: Any = layer.attention.k_proj.weight  # type: ignore[union-attr]
    if hasattr(weight, "to_local"):  # DTensor: the local shard decides the cache width
        weight = weight.to_local()
    return int(weight.shape[0]) // head_dim


def kv_cache_bytes(model: Transformer, head_dim: int, batch_size: int, max_len: int) -> int:
    """Cache bytes for ``max_len`` tokens per row, plus the model's prefix slots (if any)."""
    dtype = next(model.parameters()).dtype
    return KVCache.num_bytes(len(model.layers), batch_size, prefix_length(model) + max_len,
                             local_kv_heads(model, head_dim), head_dim, dtype)


def new_cache(model: Transformer, head_dim: int, batch_size: int, num_slots: int) -> GenerationCache:
    """An empty cache of ``num_slots`` slots per row for this process's layers and heads."""
    param = next(model.parameters())
    return GenerationCache([int(i) for i in model.layers.keys()], batch_size, num_slots,
                           local_kv_heads(model, head_dim), head_dim, param.dtype, param.device)


def attention_by_row(device: torch.device) -> bool:
    """Whether decode steps whose rows differ in length run attention row by row, each
    over its own slots, instead of one masked call over the longest row's slots.

    Continuous batching keeps rows of every length from 1 to ``max_new_tokens`` in the
    batch, so one call reads about twice the cache it needs. Row by row costs a call per
    row and layer and leaves each call too little work to split across threads: on one
    CPU thread it is faster once rows would read >= ``BY_ROW_MIN_MEAN_GAP`` unneeded
    slots each (batch 32, lengths spread up to 512 slots: 2.7 vs 3.6 ms per layer; up to
    1000: 4.2 vs 6.9 ms; ``benchmarks/decode_attention.py``), with more threads not.
    """
    return device.type == "cpu" and torch.get_num_threads() == 1


def prefill(model: Transformer, tokens: Tensor, positions: Tensor, cache: GenerationCache) -> Tensor:
    """Run equal-length prompts ``[batch, seq]`` into slots ``[cache.length, cache.length + seq)``
    (after any prefix slots already filled); returns the model's output at the last slot.

    That is logits ``[batch, vocab]``, or hidden states ``[batch, hidden]`` inside
    :func:`output_detached` (how the engine runs it: for short prompts projecting the
    last slot alone skips a good part of the prefill FLOPs). The mask is the cache's
    causal default: every prompt token sees the prefix and the tokens before it.
    """
    start = cache.length
    cache.length = start + tokens.shape[1]
    cache_pos = torch.arange(start, cache.length, device=tokens.device)
    return model(tokens, positions, None, cache, cache_pos)[:, -1]


def decode_one_token(
    model: Transformer, token: Tensor, position: Tensor, mask: Tensor | None, cache: GenerationCache, slot: Tensor
) -> Tensor:
    """One step: token/position ``[batch, 1]``, mask ``[batch, 1, 1, cache.length]`` or None
    (every row sees every slot before ``cache.length``) -> output ``[batch, vocab|hidden]``.

    ``slot`` (``[1]``) is the last slot written when all rows share it; rows writing at
    their own slots use ``cache.write_slots``.
    """
    return model(token, position, mask, cache, slot)[:, -1]


def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    sample_ids: Sequence[int],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    vocab_size: int,
    head_dim: int,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    decode_step: Callable[..., Tensor] = decode_one_token,
    projection: VocabProjection | None = None,
) -> list[Generation]:
    """Generate for one batch (all rows at once); results in the order of ``sample_ids``."""
    results = {g.sample_id: g for g in generate_stream(
        model, list(zip(sample_ids, prompts, strict=True)), params, batch_size=max(len(prompts), 1),
        max_new_tokens=max_new_tokens, vocab_size=vocab_size, head_dim=head_dim, stop_ids=stop_ids, seed=seed,
        decode_step=decode_step, projection=projection)}
    return [results[i] for i in sample_ids]


def generate_stream(
    model: Transformer,
    work: Sequence[tuple[int, Sequence[int]]],
    params: SamplingParams,
    *,
    batch_size: int,
    max_new_tokens: int,
    vocab_size: int,
    head_dim: int,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    decode_step: Callable[..., Tensor] = decode_one_token,
    projection: VocabProjection | None = None,
    queue: WorkQueue | None = None,
) -> Iterator[Generation]:
    """Generate every ``(sample_id, prompt)`` of ``work``, up to ``batch_size`` at once and
    in the order given, refilling finished rows; yields each sample as it finishes.

    With ``queue`` (shared with other processes, see ``generate.cpu_workers.SharedQueue``)
    the rows take their samples from it instead, and ``work`` only sizes the batch and
    the cache: every sample the queue may hand out must be in it.

    Every prompt needs at least one token (use BOS/EOS for unconditional samples).
    ``decode_step`` may be a ``torch.compile``d :func:`decode_one_token`. ``projection``
    (of ``model.output``) lets a run of many calls prepack the output weight once.
    """
    if not work:
        return
    if min(len(prompt) for _, prompt in work) < 1:
        raise ValueError("every prompt needs at least one token (BOS/EOS for unconditional samples)")
    batch = _ContinuousBatch(model, work, queue if queue is not None else InOrder(work), params,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, vocab_size=vocab_size,
                             head_dim=head_dim, stop_ids=stop_ids, seed=seed)
    while batch.active():
        # The model runs without its output layer only inside the step, never while the caller has control.
        with torch.inference_mode(), output_detached(model) as output:
            finished = batch.step(decode_step, projection if projection is not None else VocabProjection(output))
        yield from finished


class _ContinuousBatch:
    """The rows of a continuous batch and the queue that refills them (see the module doc)."""

    def __init__(self, model: Transformer, work: Sequence[Work], pending: WorkQueue, params: SamplingParams, *,
                 batch_size: int, max_new_tokens: int, vocab_size: int, head_dim: int, stop_ids: Sequence[int],
                 seed: int) -> None:
        self.model, self.params, self.seed, self.head_dim = model, params, seed, head_dim
        self.max_new_tokens, self.vocab_size = max_new_tokens, vocab_size
        self.device = next(model.parameters()).device
        self.prefix_len = prefix_length(model)
        self.pending = pending
        rows = min(batch_size, len(work))
        num_slots = self.prefix_len + max(len(prompt) for _, prompt in work) + max_new_tokens
        self.cache = new_cache(model, head_dim, rows, num_slots)
        self.attention_by_row = attention_by_row(self.device)
        self.slot_index = torch.arange(num_slots, device=self.device)
        self.stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        # Per cache row: the sample it holds, its generator, slots written (prefix
        # included), tokens sampled, those tokens, the token to feed next, and whether
        # it is still sampling. Free rows wait for the next prompt (or for compaction).
        self.ids = [-1] * rows
        self.generators: list[torch.Generator | None] = [None] * rows
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.produced = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.out = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=self.device)
        self.next_token = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.alive = torch.zeros(rows, dtype=torch.bool, device=self.device)
        self.free = list(range(rows))
        self.logits: Tensor | None = None  # [rows, padded_vocab]: each live row's next-token logits
        self.started = False

    def active(self) -> bool:
        return bool(self.pending) or bool(self.alive.any())

    def step(self, decode_step: Callable[..., Tensor], project: VocabProjection) -> list[Generation]:
        """Sample one token for every live row, retire finished rows, run one decode step
        and prefill pending prompts into the free rows."""
        if not self.started:
            self.started = True
            if self.prefix_len:
                self.cache.length = self.prefix_len
                fill_prefix_cache(self.model, self.cache)  # every row's slots [0, P), kept across refills
            self._admit(project)
        # No live row: a shared queue ran dry between the check and the take.
        finished = self._sample() if bool(self.alive.any()) else []
        if not self.pending and len(self.free) >= COMPACT_FRACTION * len(self.ids) and bool(self.alive.any()):
            self._compact()
        if bool(self.alive.any()):
            self._decode(decode_step, project)
        self._admit(project)
        return finished

    def _sample(self) -> list[Generation]:
        live = self.alive.nonzero().squeeze(1)  # [live]
        live_list = live.tolist()
        assert self.logits is not None
        uniforms = None if self.params.greedy else draw_uniforms([self.generators[i] for i in live_list])  # type: ignore[misc]
        logits = self.logits if len(live_list) == len(self.ids) else self.logits[live]
        picked = sample_next(logits, self.params, self.vocab_size, uniforms)  # [live]
        self.out[live, self.produced[live]] = picked
        self.produced[live] += 1
        self.next_token[live] = picked
        stopped = torch.isin(picked, self.stops) if self.stops.numel() else torch.zeros_like(picked, dtype=torch.bool)
        done = stopped | (self.produced[live] >= self.max_new_tokens)
        finished = []
        for index in done.nonzero().squeeze(1).tolist():
            row, eos = live_list[index], bool(stopped[index])
            count = int(self.produced[row]) - eos  # EOS itself is not part of the text
            finished.append(Generation(self.ids[row], self.out[row, :count].tolist(), "eos" if eos else "length"))
            self.alive[row] = False
            self.free.append(row)
        return finished

    def _decode(self, decode_step: Callable[..., Tensor], project: VocabProjection) -> None:
        """Feed every row its last token. Finished rows feed a dummy at their current slot
        (never a prefix slot, never past the cache) and do not advance."""
        lengths, cache = self.lengths, self.cache
        if bool((lengths == lengths[0]).all()):  # one shared slot: plain slices, no mask
            cache.length, cache.write_slots, mask = int(lengths[0]) + 1, None, None
        else:
            cache.length = int(lengths.max()) + 1
            cache.write_slots = lengths
            attend = ((lengths + 1) * self.alive).tolist() if self.attention_by_row else []
            if sum(cache.length - n for n in attend) > BY_ROW_MIN_MEAN_GAP * len(attend):
                cache.attend_lengths, mask = attend, None  # each row reads its own slots; finished rows none
            else:
                mask = (self.slot_index[None, :cache.length] <= lengths[:, None])[:, None, None, :]  # [rows, 1, 1, len]
        positions = (lengths - self.prefix_len)[:, None]  # [rows, 1]
        slot = self.slot_index[cache.length - 1:cache.length]
        self.logits = project(decode_step(self.model, self.next_token[:, None], positions, mask, cache, slot))
        cache.write_slots, cache.attend_lengths = None, None
        self.lengths = lengths + self.alive

    def _admit(self, project: VocabProjection) -> None:
        """Prefill pending prompts into free rows, equal lengths together (no padding)."""
        if not (self.free and self.pending):
            return
        entries = self.pending.take(len(self.free))
        rows = self.free[:len(entries)]
        del self.free[:len(rows)]
        by_length: dict[int, list[int]] = {}
        for k, (_, prompt) in enumerate(entries):
            by_length.setdefault(len(prompt), []).append(k)
        prefix_len = self.prefix_len
        for length, group in by_length.items():
            scratch = new_cache(self.model, self.head_dim, len(group), prefix_len + length)
            if prefix_len:
                scratch.length = prefix_len
                fill_prefix_cache(self.model, scratch)
            tokens = torch.tensor([list(entries[k][1]) for k in group], dtype=torch.long, device=self.device)
            positions = torch.arange(length, device=self.device)[None]  # [1, seq]
            fresh = project(prefill(self.model, tokens, positions, scratch))  # [group, padded_vocab]
            target = torch.tensor([rows[k] for k in group], dtype=torch.long, device=self.device)
            self.cache.copy_rows_from(target, scratch, prefix_len, prefix_len + length)
            if self.logits is None:
                self.logits = fresh.new_empty(len(self.ids), fresh.shape[-1])
            self.logits[target] = fresh
            self.lengths[target] = prefix_len + length
        for row, (sample_id, _) in zip(rows, entries, strict=True):
            self.ids[row] = sample_id
            self.generators[row] = None if self.params.greedy else sample_generator(self.seed, sample_id)
            self.produced[row] = 0
            self.alive[row] = True

    def _compact(self) -> None:
        """Drop the free rows (the queue is empty, so nothing will refill them)."""
        keep = self.alive.nonzero().squeeze(1)
        keep_list = keep.tolist()
        self.cache.keep_rows(keep)
        self.ids = [self.ids[i] for i in keep_list]
        self.generators = [self.generators[i] for i in keep_list]
        self.lengths, self.produced, self.out = self.lengths[keep], self.produced[keep], self.out[keep]
        self.next_token, self.alive = self.next_token[keep], self.alive[keep]
        assert self.logits is not None
        self.logits = self.logits[keep]
        self.free = []
