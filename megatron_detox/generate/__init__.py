"""Batched KV-cache generation and the SGEAT self-generation stage.

- ``engine``: ``prefill`` / ``decode_one_token`` / ``generate_batch`` on token ids
- ``projection``: the output layer on the sampled slots only (prepacked on CPU)
- ``sampling``: greedy, temperature, top-k, top-p with one generator per sample id
- ``prompts``: prompt JSONL -> numbered work items
- ``writer``: per-rank append-only shards, merge into ``generations.jsonl``, manifest
- ``stage``: ``run_generation_stage`` ties them together (DP split, resume, progress)
"""

from megatron_detox.generate.engine import Generation, GenerationCache, decode_one_token, generate_batch, prefill
from megatron_detox.generate.prompts import (
    WorkItem,
    default_stop_ids,
    prompt_items,
    read_prompts,
    unconditional_items,
)
from megatron_detox.generate.sampling import SamplingParams, sample_generator, sample_next
from megatron_detox.generate.stage import GenerationSpec, complete, run_generation_stage

__all__ = [
    "Generation",
    "GenerationCache",
    "GenerationSpec",
    "SamplingParams",
    "WorkItem",
    "complete",
    "decode_one_token",
    "default_stop_ids",
    "generate_batch",
    "prefill",
    "prompt_items",
    "read_prompts",
    "run_generation_stage",
    "sample_generator",
    "sample_next",
    "unconditional_items",
]
