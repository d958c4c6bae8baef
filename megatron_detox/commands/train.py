"""``megatron-detox train CONFIG [key=value ...]``: parse, then ``megatron_detox.train.train``."""

from __future__ import annotations

import argparse

from megatron_detox.commands.guard import add_force_unlock
from megatron_detox.config import load_config
from megatron_detox.preemption import REQUEUE_EXIT_CODE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model (resumes from run_dir/checkpoints/latest)",
        description="Launch under torchrun or srun for several processes; the layout comes from parallel.*. "
                    "Rerunning the same command continues from the last checkpoint.",
    )
    parser.add_argument("config", help="YAML run config (e.g. configs/train/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 train.steps=10")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_force_unlock(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_detox.train import train  # noqa: PLC0415 - heavy imports only when training

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, progress=not args.no_progress, force_unlock=args.force_unlock)
    if result.is_main:  # once per job, not once per rank
        print(f"trained to step {result.step}; checkpoint {result.checkpoint}")
    if result.stopped_by_signal:  # checkpointed: the SLURM scripts requeue on this code
        return REQUEUE_EXIT_CODE
    return 0
