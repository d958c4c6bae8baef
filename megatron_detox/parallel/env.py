"""Process-group setup: the only place that reads torchrun / SLURM environment variables.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
under ``srun`` we derive them from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
and the first host of ``SLURM_JOB_NODELIST``. Without either, the run is a plain single
process: world 1, no process group, no mesh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from megatron_detox.config import ParallelConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.parallel.dims import ParallelDims

DEFAULT_MASTER_PORT = 29500


@dataclass
class DistEnv:
    """What ``init_distributed`` returns; passed explicitly to everything that needs it."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dims: ParallelDims
    mesh: DeviceMesh | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes run-level files."""
        return self.rank == 0


@dataclass(frozen=True)
class LaunchInfo:
    """Rank coordinates read from the environment (``None`` master for a single process)."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str | None
    master_port: int
    launcher: str  # "torchrun" | "slurm" | "single"


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist (``node[01-03,7],gpu5``) into host names, in order."""
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if match is None:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)  # keep zero padding: node[01-03] -> node01
            hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    """First host of the allocation: ``scontrol show hostnames`` when available, else our parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                                 capture_output=True, text=True, timeout=30).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass  # fall back to the parser: same answer for the hostlist syntax SLURM uses
    hosts = parse_nodelist(nodelist)
    if not hosts:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot parse a host name from it")
    return hosts[0]


def _int_env(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer") from None


def read_launch_env(env: Mapping[str, str]) -> LaunchInfo:
    """Rank, local rank, world size and rendezvous address from torchrun or SLURM variables."""
    port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo(
            rank=_int_env(env, "RANK"), world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port, launcher="torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _int_env(env, "SLURM_NTASKS")
        addr = env.get("MASTER_ADDR")
        if addr is None and world > 1:
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodelist:
                raise UserError("SLURM: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set; export MASTER_ADDR "
                                "in the sbatch script")
            addr = _first_slurm_host(nodelist)
        return LaunchInfo(rank=_int_env(env, "SLURM_PROCID"), world_size=world,
                          local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                          master_addr=addr, master_port=port, launcher="slurm")
    return LaunchInfo(rank=0, local_rank=0, world_size=1, master_addr=None, master_port=port, launcher="single")


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (this rank's local GPU when there is one, else the CPU), ``cpu`` or ``cuda``."""
    if spec not in DEVICES:
        raise UserError(f"--device {spec}: must be one of {', '.join(DEVICES)}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (this torch build or machine has none); "
                        "use --device cpu or --device auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(parallel: ParallelConfig, model: ModelConfig,
                     env: Mapping[str, str] | None = None, device: str = "auto") -> DistEnv:
    """Validate the layout, then join the process group and build the mesh.

    Validation happens before ``init_process_group`` and before any tensor is
    allocated, so an impossible layout fails on every rank with the same one line.
    ``device`` (:func:`resolve_device`): the rank's local GPU with NCCL, or the CPU with
    gloo. ``env`` defaults to ``os.environ`` (tests pass a dict).
    """
    launch = read_launch_env(os.environ if env is None else env)
    dims = ParallelDims.from_config(parallel, model, launch.world_size)
    resolved = resolve_device(device, launch.local_rank)
    if launch.world_size == 1 and not dist.is_initialized():
        return DistEnv(rank=0, local_rank=0, world_size=1, device=resolved, dims=dims, mesh=None)

    use_cuda = resolved.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        if launch.master_addr is not None:
            # torchrun already exports these; SLURM runs need them for the env:// rendezvous.
            os.environ.setdefault("MASTER_ADDR", launch.master_addr)
            os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=launch.rank,
                                world_size=launch.world_size, timeout=timedelta(minutes=30),
                                device_id=resolved if use_cuda else None)
    mesh = dims.build_mesh(resolved.type)
    return DistEnv(rank=launch.rank, local_rank=launch.local_rank, world_size=launch.world_size,
                   device=resolved, dims=dims, mesh=mesh)
