"""The one place that imports megatron-core's dataset code.

Importing ``megatron.core`` pulls in its optimizer/FSDP modules, which warn that
Transformer Engine and Apex are missing; those warnings say nothing about datasets,
so they are silenced here instead of in every caller.
"""

from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

# megatron-core logs every index build at INFO through the root handlers; keep it to warnings.
logging.getLogger("megatron.core").setLevel(logging.WARNING)


def optimal_dtype(vocab_size: int) -> type:
    """The token dtype Megatron-LM's preprocess_data.py uses for this vocabulary."""
    return DType.optimal_dtype(vocab_size)  # type: ignore[no-any-return]


__all__ = [
    "BlendedMegatronDatasetBuilder",
    "DType",
    "GPTDataset",
    "GPTDatasetConfig",
    "IndexedDataset",
    "IndexedDatasetBuilder",
    "optimal_dtype",
]
