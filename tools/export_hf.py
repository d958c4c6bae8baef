"""``python tools/export_hf.py CKPT OUT``: a checkpoint of ours as a Hugging Face folder.

Thin: the same as ``megatron-detox export hf``; see its ``--help``.
"""

import sys

from megatron_detox.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", "hf", *sys.argv[1:]]))
