"""Megatron-LM's familiar entry point: ``python tools/preprocess_data.py --input F.jsonl ...``.

Thin: the same as ``megatron-detox data preprocess``; see its ``--help``.
"""

import sys

from megatron_detox.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["data", "preprocess", *sys.argv[1:]]))
