"""Batched generation with a preallocated KV cache (gpt-fast style), token ids only.

Ragged prompts are left-padded to a common length ``L``, so every row writes cache slot
``t`` at step ``t`` and the whole batch shares ``cache_pos``. Each row has its own
positions (slot minus its padding) and a key mask hiding its padding slots. Attention
only reads the slots written so far (:class:`GenerationCache`), so decoding step ``t``
costs ``O(t)``, not ``O(max_len)``.

Prefix tuning (``peft.prefix``): a model with ``P = prefix_length(model) > 0`` keeps its
prefix keys/values in the cache's first ``P`` slots (:func:`fill_prefix_cache`), so token
slot ``t`` is cache slot ``P + t`` while positions stay as without prefix (the prefix has
no position), and every mask starts with ``P`` always-visible columns. With ``P == 0``
none of this costs anything.

The engine only calls ``model(tokens, positions, mask, cache, cache_pos)``: a
tensor-parallel (DTensor) model works unchanged as long as the cache holds the local
key/value heads, which :func:`local_kv_heads` reads from the ``k_proj`` shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from megatron_detox.generate.projection import VocabProjection, output_detached
from megatron_detox.generate.sampling import SamplingParams, draw_uniforms, sample_generator, sample_next
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.peft.prefix import fill_prefix_cache, prefix_length

FinishReason = str  # "eos" | "length"
# Compact the batch (drop finished rows from cache and inputs) once this fraction of
# the rows has finished; copying the cache on every single finish would cost more.
COMPACT_FRACTION = 0.25


class GenerationCache(KVCache):
    """A KV cache written in order, whose ``update`` returns only the slots written so far.

    ``length`` is set by the engine before each forward (and before the prefix is
    written): the call writes slots ``[length - seq, length)``, which is what its
    ``cache_pos`` says, as plain slices, and attention gets ``[batch, length, kv_heads,
    head_dim]`` views. The engine's mask, if any, is ``[batch, 1, seq, length]``; a
    single-token step without one sees every written slot.
    """

    length: int = 0

    def update(self, layer_id: int, cache_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start = self.length - k.shape[1]
        keys, values = self.keys[layer_id], self.values[layer_id]
        keys[:, start:self.length] = k  # a slice copy costs a fraction of index_copy_ per decode step
        values[:, start:self.length] = v
        return keys[:, : self.length], values[:, : self.length]

    def default_mask(self, cache_pos: Tensor, kv_len: int) -> Tensor | None:
        return None if cache_pos.numel() == 1 else super().default_mask(cache_pos, kv_len)

    def keep_rows(self, rows: Tensor) -> None:
        """Drop every batch row not in ``rows`` (``[new_batch]`` indices)."""
        for store in (self.keys, self.values):
            for layer_id, buffer in store.items():
                store[layer_id] = buffer.index_select(0, rows)
        self.batch_size = int(rows.numel())


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


def prefill(model: Transformer, tokens: Tensor, positions: Tensor, mask: Tensor, cache: GenerationCache) -> Tensor:
    """Run the prompts ``[batch, seq]``; returns the model's output at their last slot.

    That is logits ``[batch, vocab]``, or hidden states ``[batch, hidden]`` inside
    :func:`output_detached` (how :func:`generate_batch` runs it: for 16-token prompts
    projecting the last slot alone skips ~20% of the prefill FLOPs).
    ``mask`` is ``[batch, 1, seq, prefix + seq]``: the prompts go to the cache slots right
    after the ``prefix`` slots already filled (0 without prefix tuning).
    """
    cache.length = mask.shape[-1]
    cache_pos = torch.arange(cache.length - tokens.shape[1], cache.length, device=tokens.device)
    return model(tokens, positions, mask, cache, cache_pos)[:, -1]


def decode_one_token(
    model: Transformer, token: Tensor, position: Tensor, mask: Tensor | None, cache: GenerationCache, slot: Tensor
) -> Tensor:
    """One step: token/position ``[batch, 1]``, mask ``[batch, 1, 1, slot+1]`` or None (no
    padding to hide) -> output ``[batch, vocab|hidden]``.

    ``slot`` (``[1]``) is the cache slot written, prefix slots included; the caller has
    set ``cache.length`` to ``slot + 1``.
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
    """Generate for one batch (all rows at once); results in the order of ``sample_ids``.

    Every prompt needs at least one token (use BOS/EOS for unconditional samples).
    ``decode_step`` may be a ``torch.compile``d :func:`decode_one_token`. ``projection``
    (of ``model.output``) lets a run of many batches prepack the output weight once.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    if batch == 0:
        return []
    if int(lengths.min()) < 1:
        raise ValueError("every prompt needs at least one token (BOS/EOS for unconditional samples)")
    prompt_len = int(lengths.max())
    total = prompt_len + max_new_tokens  # token slots; the cache holds prefix_len more in front
    prefix_len = prefix_length(model)

    tokens = torch.zeros(batch, prompt_len, dtype=torch.long, device=device)  # left-padded with id 0
    for row, prompt in enumerate(prompts):
        tokens[row, prompt_len - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
    pad = prompt_len - lengths  # [batch]
    slots = torch.arange(total, device=device)
    key_valid = slots[None, :] >= pad[:, None]  # [batch, total]: False on padding slots
    positions = (slots[None, :] - pad[:, None]).clamp(min=0)  # [batch, total]

    # Prefill mask [batch, 1, L, L]: causal and no padding keys. A padding query sees
    # itself only, so its softmax row is never empty (an all-masked row gives NaN,
    # which would leak into that slot's keys at the next layer).
    causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).tril()
    eye = torch.eye(prompt_len, dtype=torch.bool, device=device)
    prefill_mask = (causal[None] & key_valid[:, None, :prompt_len]) | eye[None]
    if prefix_len:
        # Prefix slots come first in the cache and every query (padding included) sees them.
        key_valid = torch.cat([key_valid.new_ones(batch, prefix_len), key_valid], dim=1)  # [batch, prefix + total]
        prefill_mask = torch.cat([prefill_mask.new_ones(batch, prompt_len, prefix_len), prefill_mask], dim=2)
        slots = torch.arange(prefix_len + total, device=device)  # cache slots; positions stay token-based

    layer_ids = [int(i) for i in model.layers.keys()]
    cache = GenerationCache(layer_ids, batch, prefix_len + total, local_kv_heads(model, head_dim), head_dim,
                            dtype, device)
    generators = [sample_generator(seed, i) for i in sample_ids]
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)

    out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)  # by original row
    num_tokens = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    hit_eos = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # original row of each cache row
    padded = not bool(key_valid.all())
    alive = torch.ones(batch, dtype=torch.bool, device=device)  # cache rows still sampling

    with torch.inference_mode(), output_detached(model) as output:
        project = projection if projection is not None else VocabProjection(output)
        if prefix_len:
            cache.length = prefix_len
            fill_prefix_cache(model, cache)  # slots [0, prefix_len), the same for every row
        logits = project(prefill(model, tokens, positions[:, :prompt_len], prefill_mask[:, None], cache))
        for step in range(max_new_tokens):
            live = alive.nonzero().squeeze(1)  # [live]
            live_list = live.tolist()
            uniforms = None if params.greedy else draw_uniforms([generators[i] for i in live_list])
            live_logits = logits if len(live_list) == len(rows) else logits[live]
            picked = sample_next(live_logits, params, vocab_size, uniforms)  # [live]
            out[rows[live], step] = picked
            next_token = torch.zeros(len(rows), dtype=torch.long, device=device)
            next_token[live] = picked  # finished rows feed a dummy token until compaction
            if stops.numel():
                finished = live[torch.isin(picked, stops)]
                if finished.numel():
                    num_tokens[rows[finished]] = step  # EOS itself is not part of the text
                    hit_eos[rows[finished]] = True
                    alive[finished] = False
            if step == max_new_tokens - 1 or not bool(alive.any()):
                break
            if int(alive.sum()) <= (1.0 - COMPACT_FRACTION) * len(rows):
                keep = alive.nonzero().squeeze(1)
                cache.keep_rows(keep)
                key_valid, positions, rows = key_valid[keep], positions[keep], rows[keep]
                next_token, alive = next_token[keep], alive[keep]
                padded = not bool(key_valid.all())
                generators = [generators[i] for i in keep.tolist()]
            slot = prompt_len + step  # token slot (position index); the cache slot is prefix_len later
            cache_slot = prefix_len + slot
            # Without padding a step needs no mask: its token sees every written slot.
            mask = key_valid[:, None, None, :cache_slot + 1] if padded else None
            cache.length = cache_slot + 1
            logits = project(decode_step(
                model, next_token[:, None], positions[:, slot:slot + 1], mask, cache, slots[cache_slot:cache_slot + 1],
            ))
    result = []
    for row, sample_id in enumerate(sample_ids):
        n = int(num_tokens[row])
        result.append(Generation(sample_id, out[row, :n].tolist(), "eos" if bool(hit_eos[row]) else "length"))
    return result
