"""``megatron-detox export hf CKPT OUT``: a checkpoint of ours as a transformers model folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export checkpoints to other formats",
                                   description="Export a checkpoint of ours.")
    commands = parser.add_subparsers(dest="export_command", metavar="<format>", required=True)
    hf = commands.add_parser("hf", help="config.json + model.safetensors for transformers.AutoModelForCausalLM",
                             description="CKPT is a step folder, a checkpoints folder or a run folder (uses latest).")
    hf.add_argument("checkpoint", help="checkpoint, checkpoints or run folder")
    hf.add_argument("out", help="output folder (replaced)")
    hf.set_defaults(func=run_hf)


def run_hf(args: argparse.Namespace) -> int:
    from megatron_detox.train.export import export_hf  # noqa: PLC0415

    out, cfg = export_hf(args.checkpoint, args.out)
    print(f"exported {cfg.name} ({cfg.num_layers} layers) to {out}")
    return 0
