"""``megatron-detox convert --from F --to G --input PATH --output PATH``: thin; see megatron_detox.convert."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from megatron_detox.convert.run import DTYPES, SINKS, SOURCES  # noqa: PLC0415

    parser = subparsers.add_parser(
        "convert", help="convert checkpoints: Megatron-LM, ours (DCP), Hugging Face, GGUF",
        description="Convert a checkpoint tensor group by tensor group (peak memory about one layer), "
                    "resharding Megatron-LM checkpoints to --tp/--pp. See docs/conversion.md.")
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument("--to", dest="target", required=True, choices=SINKS)
    parser.add_argument("--input", required=True, type=Path,
                        help="Megatron-LM checkpoint root (with latest_checkpointed_iteration.txt), run/step "
                             "folder of ours, HF folder or .gguf file")
    parser.add_argument("--output", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size of a Megatron output")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of a Megatron output")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors (default: keep)")
    parser.add_argument("--vocab-size", type=int,
                        help="the tokenizer's true vocabulary (Megatron stores only the padded size; "
                             "a model with more tokens is refused)")
    parser.add_argument("--max-shard-size", type=float, default=5.0, help="GiB per HF safetensors shard")
    parser.add_argument("--megatron-te", action="store_true",
                        help="Megatron output for Transformer Engine layers (norms folded into linear_qkv/fc1)")
    parser.add_argument("--dry-run", action="store_true", help="print the name mapping and shapes, write nothing")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_detox.convert import ConvertOptions, convert  # noqa: PLC0415

    opts = ConvertOptions(source=args.source, target=args.target, input=args.input, output=args.output,
                          tp=args.tp, pp=args.pp, dtype=args.dtype, vocab_size=args.vocab_size,
                          max_shard_bytes=int(args.max_shard_size * 2**30), megatron_te=args.megatron_te,
                          dry_run=args.dry_run, progress=not args.no_progress)
    out = convert(opts)
    if out is not None:
        print(f"wrote {out}")
    return 0
