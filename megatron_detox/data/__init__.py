"""Data: JSONL/text → megatron-core indexed datasets, and GPT training samples from them."""

from megatron_detox.data.gpt_data import Blend, build_gpt_datasets, check_prefixes, parse_blend, sample_batch
from megatron_detox.data.preprocess import PreprocessReport, SkippedLine, preprocess
from megatron_detox.data.text_cache import preprocess_text_files

__all__ = [
    "Blend",
    "PreprocessReport",
    "SkippedLine",
    "build_gpt_datasets",
    "check_prefixes",
    "parse_blend",
    "preprocess",
    "preprocess_text_files",
    "sample_batch",
]
