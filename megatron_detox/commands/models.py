"""``megatron-detox models``: the preset table with exact parameter counts."""

from __future__ import annotations

import argparse
import json

from megatron_detox.models.presets import PRESETS
from megatron_detox.models.summary import preset_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list model presets with exact parameter counts",
        description="Counts come from the module built on the meta device (no memory used).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    parser.add_argument("--peft", choices=("adapter", "prefix"),
                        help="trainable vs total parameters with this PEFT method (default peft.* config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.peft:
        from megatron_detox.commands.peft import run_models_table

        return run_models_table(args.peft, args.json)
    rows = preset_rows(list(PRESETS))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'preset':<14} {'params':>17} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>4} {'vocab':>6} {'seq':>5}  family"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<14} {row['parameters']:>17,} {row['num_layers']:>6} {row['hidden_size']:>6} "
            f"{row['num_attention_heads']:>5} {row['num_query_groups']:>4} {row['padded_vocab_size']:>6} "
            f"{row['max_position_embeddings']:>5}  {row['family']}"
        )
    return 0
