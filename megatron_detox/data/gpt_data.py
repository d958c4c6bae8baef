"""Training data through megatron-core: weighted blends of indexed datasets, split, shuffled.

``build_gpt_datasets`` wraps ``BlendedMegatronDatasetBuilder`` + ``GPTDataset``: a blend
``[w1, prefix1, w2, prefix2]`` (or plain prefixes, weighted by size), Megatron's
``split`` string, fixed-length samples of ``seq_length + 1`` tokens, and a sample order
fixed by the seed. Index files (document/sample/shuffle ``.npy``) are cached in
``cache_dir`` and reused by later runs with the same inputs.

The sample order is the data position: global step ``s`` uses samples
``[s * global_batch, (s + 1) * global_batch)`` of the train split, whatever the layout,
so a resumed run (on any layout) reads exactly the samples it would have read.

A prefix with a companion loss mask (``P.loss_mask.bin/.idx``, see ``data.loss_mask``)
gets it applied to its samples' ``loss_mask``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_detox.data.loss_mask import LossMaskedGPTDataset
from megatron_detox.data.megatron_core import (
    BlendedMegatronDatasetBuilder,
    GPTDataset,
    GPTDatasetConfig,
    IndexedDataset,
)
from megatron_detox.data.megatron_tokenizer import MegatronTokenizer
from megatron_detox.errors import UserError
from megatron_detox.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class Blend:
    prefixes: list[str]
    weights: list[float] | None
    """None: weighted by dataset size (Megatron's default)."""


def parse_blend(paths: Sequence[str | float], field: str = "data.paths") -> Blend:
    """``[A, B]`` or ``[0.3, A, 0.7, B]`` (Megatron's ``--data-path`` syntax)."""
    items = [str(item) for item in paths]
    if not items:
        raise UserError(f"{field}: no data; give prefixes of .bin/.idx files or data.text_files")

    def is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    if not is_number(items[0]):
        numbers = [item for item in items if is_number(item)]
        if numbers:
            raise UserError(f"{field}={items}: mixes weights and prefixes; use [weight, prefix, weight, prefix, ...]")
        return Blend(items, None)
    if len(items) % 2:
        raise UserError(f"{field}={items}: weighted blends need [weight, prefix] pairs")
    weights = [float(w) if is_number(w) else -1.0 for w in items[0::2]]
    for weight, text in zip(weights, items[0::2], strict=True):
        if weight <= 0:
            raise UserError(f"{field}: weight {text!r} must be a positive number")
    return Blend(items[1::2], weights)


def check_prefixes(prefixes: Sequence[str], field: str = "data.paths") -> None:
    """A missing ``.bin``/``.idx`` is a user mistake, reported before any index is built."""
    for index, prefix in enumerate(prefixes):
        if not IndexedDataset.exists(prefix):
            missing = [p for p in (prefix + ".bin", prefix + ".idx") if not Path(p).is_file()]
            raise UserError(f"{field}[{index}]={prefix!r}: {' and '.join(missing)} not found; "
                            "give the prefix without .bin/.idx or run `megatron-detox data preprocess`")


def gpt_dataset_config(
    blend: Blend, tokenizer: Tokenizer, *, seq_length: int, seed: int, split: str, cache_dir: str | Path
) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(blend.prefixes, blend.weights),
        split=split,
        path_to_cache=str(cache_dir),
        tokenizer=MegatronTokenizer(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The model builds its own causal mask; a [1, s, s] mask per sample is wasted memory.
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def build_gpt_datasets(
    blend: Blend,
    tokenizer: Tokenizer,
    *,
    seq_length: int,
    seed: int,
    split: str,
    num_samples: tuple[int, int, int],
    cache_dir: str | Path,
) -> list[GPTDataset | None]:
    """[train, valid, test] datasets with at least ``num_samples`` samples each (None: empty split).

    Call it on every rank: under torch.distributed megatron-core builds the index files
    on rank 0 first and the other ranks load them after a barrier.
    """
    check_prefixes(blend.prefixes)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    config = gpt_dataset_config(blend, tokenizer, seq_length=seq_length, seed=seed, split=split,
                                cache_dir=cache_dir)
    _drop_unrequested_splits(config, num_samples)
    _check_requested_splits(blend, config, num_samples, split)
    builder = BlendedMegatronDatasetBuilder(LossMaskedGPTDataset, list(num_samples), lambda: True, config)
    try:
        with _process_group_for_megatron_core():
            return list(builder.build())
    except AssertionError as error:  # megatron-core validates with asserts
        raise UserError(f"data: megatron-core could not build the datasets from {blend.prefixes} "
                        f"(split={split!r}, seq_length={seq_length}): {error or 'assertion failed'}; "
                        "check that every split has documents") from None


_SPLIT_NAMES = ("train", "valid", "test")


def _drop_unrequested_splits(config: GPTDatasetConfig, num_samples: tuple[int, int, int]) -> None:
    """Build no index for a split nobody asked samples of (the others keep their documents).

    megatron-core would otherwise build it anyway and, for a split holding no documents,
    loop forever looking for enough tokens.
    """
    config.split_matrix = [bounds if wanted else None
                           for bounds, wanted in zip(config.split_matrix, num_samples, strict=True)]


def _check_requested_splits(blend: Blend, config: GPTDatasetConfig, num_samples: tuple[int, int, int],
                            split: str) -> None:
    """A requested split with no documents in some prefix is a user mistake, said before building."""
    for prefix in blend.prefixes:
        num_docs = GPTDataset.numel_low_level_dataset(IndexedDataset(prefix))
        for name, bounds, wanted in zip(_SPLIT_NAMES, config.split_matrix, num_samples, strict=True):
            if not wanted:
                continue
            if bounds is None or round(bounds[1] * num_docs) - round(bounds[0] * num_docs) == 0:
                raise UserError(f"data.split={split!r}: the {name} split of {prefix} gets no documents "
                                f"({num_docs} in total); give it a larger share or add data")


@contextlib.contextmanager
def _process_group_for_megatron_core() -> Iterator[None]:
    """A throw-away world-1 gloo group while megatron-core builds, if no group exists.

    megatron-core 0.16's ``BlendedDataset`` calls ``torch.distributed.get_rank()`` without
    checking that a process group exists, so weighted blends fail in a plain single
    process; an in-memory group of one process lets it run unchanged.
    """
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sample_batch(dataset: GPTDataset, start: int, count: int) -> dict[str, Tensor]:
    """Samples ``[start, start + count)`` stacked: tokens, labels, loss_mask ``[count, seq]``."""
    if len(dataset) == 0:
        raise UserError("data: the dataset split has no samples; use more data or a shorter data.seq_length")
    samples = [dataset[(start + i) % len(dataset)] for i in range(count)]
    return {
        "tokens": torch.stack([s["tokens"] for s in samples]),  # [count, seq]
        "labels": torch.stack([s["labels"] for s in samples]),  # [count, seq]
        "loss_mask": torch.stack([s["loss_mask"] for s in samples]),  # [count, seq] float
    }
