"""``python tools/checkpoint/convert.py --from megatron --to hf --input IN --output OUT``.

Thin: the same as ``megatron-detox convert``; see its ``--help``.
"""

import sys

from megatron_detox.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", *sys.argv[1:]]))
