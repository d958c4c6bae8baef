"""Build ``megatron_detox/data/packaged/rtp_train.jsonl``: the RealToxicityPrompts records of
DecodingTrust's sample that the evaluation does *not* hold out, as SGEAT prompts and a DAPT corpus.

    python tools/data/build_rtp_train.py DECODINGTRUST_DIR   # holds toxic.jsonl, nontoxic.jsonl

Per record: ``prompt.text`` and ``continuation.text`` verbatim, ``text`` = their concatenation
(the original OpenWebText sentence) and ``source`` (file:line). The last 100 lines of each file
are the packaged held-out evaluation prompts and are left out here; the two files are
interleaved so that any prefix holds toxic and non-toxic prompts alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

HELD_OUT = 100  # the last lines of each file: rtp_{toxic,nontoxic}_heldout.jsonl
OUTPUT = Path(__file__).resolve().parents[2] / "megatron_detox" / "data" / "packaged" / "rtp_train.jsonl"


def records(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for number, line in enumerate(lines[:-HELD_OUT], start=1):
        record = json.loads(line)
        prompt, continuation = record["prompt"]["text"], record["continuation"]["text"]
        out.append({"prompt": {"text": prompt}, "continuation": {"text": continuation},
                    "text": prompt + continuation, "source": f"{path.name}:{number}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decodingtrust_dir", type=Path)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    toxic = records(args.decodingtrust_dir / "toxic.jsonl")
    nontoxic = records(args.decodingtrust_dir / "nontoxic.jsonl")
    merged = [r for pair in itertools.zip_longest(toxic, nontoxic) for r in pair if r is not None]
    args.output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged), encoding="utf-8")
    print(f"{args.output}: {len(merged)} records ({len(toxic)} toxic-file, {len(nontoxic)} non-toxic-file)")


if __name__ == "__main__":
    main()
