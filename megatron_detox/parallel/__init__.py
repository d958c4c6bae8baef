"""Megatron-style 4-D parallelism (TP+SP, PP, DP/FSDP2) applied to plain models from outside.

Entry points: :func:`init_distributed` (the only reader of launcher environment
variables) and :func:`build_parallel_model`. See ``docs/parallelism.md``.
"""

from megatron_detox.parallel.dims import MESH_DIM_NAMES, ParallelDims
from megatron_detox.parallel.env import DistEnv, init_distributed, parse_nodelist, read_launch_env
from megatron_detox.parallel.model import ParallelModel, build_parallel_model

__all__ = [
    "DistEnv",
    "MESH_DIM_NAMES",
    "ParallelDims",
    "ParallelModel",
    "build_parallel_model",
    "init_distributed",
    "parse_nodelist",
    "read_launch_env",
]
