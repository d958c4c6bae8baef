"""``megatron-detox peft``: inspect and merge PEFT checkpoints."""

from __future__ import annotations

import argparse
import json

from megatron_detox.peft.checkpoint import merge_peft_checkpoint, read_peft_metadata


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("peft", help="inspect or merge PEFT (adapter / prefix) checkpoints")
    sub = parser.add_subparsers(dest="peft_command", metavar="<action>", required=True)
    merge = sub.add_parser(
        "merge", help="fold a reparameterized prefix into static keys/values",
        description="Prefix checkpoints trained with peft.prefix.reparameterize=true carry an MLP; merging runs it "
                    "once and writes the static per-layer keys/values inference uses. Adapters cannot be merged "
                    "(the bottleneck is nonlinear).")
    merge.add_argument("source", help="PEFT checkpoint folder (peft.json + peft.safetensors)")
    merge.add_argument("destination", help="folder for the merged checkpoint")
    merge.set_defaults(func=run_merge)
    info = sub.add_parser("info", help="print a PEFT checkpoint's metadata")
    info.add_argument("checkpoint", help="PEFT checkpoint folder")
    info.set_defaults(func=run_info)


def run_merge(args: argparse.Namespace) -> int:
    meta = merge_peft_checkpoint(args.source, args.destination)
    print(f"merged {args.source} -> {args.destination}: {meta['num_parameters']:,} parameters "
          f"(static prefix, length {meta['peft']['length']})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    meta = read_peft_metadata(args.checkpoint)
    meta.pop("tensors", None)
    print(json.dumps(meta, indent=2))
    return 0


def run_models_table(method: str, as_json: bool) -> int:
    """``megatron-detox models --peft METHOD``: trainable vs total per preset."""
    from megatron_detox.config import PeftConfig
    from megatron_detox.models.presets import PRESETS
    from megatron_detox.peft.summary import format_peft_table, peft_rows

    peft_cfg = PeftConfig()
    rows = peft_rows(list(PRESETS), method, peft_cfg)
    print(json.dumps(rows, indent=2) if as_json else format_peft_table(rows, peft_cfg, method))
    return 0
