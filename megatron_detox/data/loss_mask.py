"""Per-token loss masks kept beside an indexed dataset, as a companion ``P.loss_mask.bin/.idx``.

The companion holds one uint8 per token of ``P`` (same document lengths): 0 where predicting
that token carries no loss — a prompt the model is conditioned on but not trained to write,
or the end-of-document token of a sample that was cut at its length limit. It rides through
megatron-core's packing unchanged: ``LossMaskedGPTDataset`` reads the companion over exactly
the document spans of each packed sample. Megatron-LM and megatron-core read ``P`` alone and
ignore the companion (every token then carries loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import torch

from megatron_detox.data.megatron_core import GPTDataset, IndexedDataset
from megatron_detox.errors import UserError

LOSS_MASK_SUFFIX = ".loss_mask"
LOSS_MASK_DTYPE = numpy.uint8


def loss_mask_prefix(prefix: str | Path) -> str:
    return f"{prefix}{LOSS_MASK_SUFFIX}"


def open_loss_mask(prefix: str, tokens: IndexedDataset) -> IndexedDataset | None:
    """The companion mask of ``prefix``, checked against its documents; None if there is none."""
    mask_prefix = loss_mask_prefix(prefix)
    if not IndexedDataset.exists(mask_prefix):
        return None
    mask = IndexedDataset(mask_prefix)
    if not numpy.array_equal(mask.sequence_lengths, tokens.sequence_lengths):
        raise UserError(f"{mask_prefix}.idx: the loss mask does not match the documents of {prefix} "
                        f"({len(mask.sequence_lengths)} against {len(tokens.sequence_lengths)} documents, or "
                        "different lengths); preprocess the data again or delete the stale mask")
    return mask


class LossMaskedGPTDataset(GPTDataset):
    """megatron-core's ``GPTDataset``, with the companion loss mask applied when the prefix has one."""

    def __init__(self, indexed_dataset: IndexedDataset, dataset_path: str | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(indexed_dataset, dataset_path, *args, **kwargs)
        if not self.config.add_extra_token_to_sequence:
            raise ValueError("the loss mask is aligned for samples of sequence_length + 1 tokens")
        self._token_dataset = indexed_dataset
        self._mask_dataset = open_loss_mask(dataset_path, indexed_dataset) if dataset_path else None

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        sample: dict[str, torch.Tensor] = super().__getitem__(idx)
        if self._mask_dataset is None or idx is None:
            return sample
        # The parent's span lookup reads from self.dataset; pointing it at the mask reads the
        # same document spans (offsets, joins, padding) that made this sample's tokens.
        self.dataset = self._mask_dataset
        try:
            values, _ = self._query_document_sample_shuffle_indices(idx)  # [seq + 1]; padding is not 1
        finally:
            self.dataset = self._token_dataset
        # Label i is token i + 1, so its loss follows the mask of token i + 1.
        sample["loss_mask"] = sample["loss_mask"] * torch.from_numpy(values[1:] == 1)
        return sample
