"""Offline scorer throughput: ``calibrated`` vs ``profanity``, texts/s on 2 threads.

Both scorers run through the same ``score_records`` pipeline (2 worker threads,
``OMP_NUM_THREADS=2``, no cache) on the same texts: ~20-token texts (RTP-style
continuations, the evaluation case) and ~1000-token texts (SGEAT self-generated
samples). Lengths count words at 0.75 words per GPT-2/SmolLM2 token. Texts are cut
from DecodingTrust RTP sentences when the shared data folder is present, else from a
fixed synthetic vocabulary. Kept short (a few thousand texts): the machine is shared.
The last line is ``ratio=<calibrated texts/s / profanity texts/s>`` on 1000-token texts.

    OMP_NUM_THREADS=2 python benchmarks/calibrated_scorer_throughput.py [--short 2000] [--long 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from megatron_detox.scoring.calibrated.scorer import CalibratedScorer
from megatron_detox.scoring.pipeline import score_records
from megatron_detox.scoring.profanity import ProfanityScorer

REPO = Path(__file__).resolve().parents[1]
WORDS_PER_TOKEN = 0.75


def load_words() -> list[str]:
    data = Path(os.environ.get("MEGATRON_DETOX_DATA", REPO.parent / "shared" / "data"))
    words: list[str] = []
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        path = data / "rtp" / "decodingtrust" / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                words += (record["prompt"]["text"] + record["continuation"]["text"]).split()
    if not words:
        words = ("the river ran past the old mill while people talked about weather and work " * 50).split()
    return words


def make_texts(words: list[str], count: int, tokens: int) -> list[str]:
    size = max(1, round(tokens * WORDS_PER_TOKEN))
    # Distinct texts (the pipeline deduplicates): a sliding window over the word stream.
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(size)) + f" #{i}" for i in range(count)]


def bench(scorer: CalibratedScorer | ProfanityScorer, texts: list[str], workers: int) -> float:
    scorer.score(texts[:8])  # warm-up
    start = time.perf_counter()
    scored = sum("scores" in r for r in score_records(({"text": t} for t in texts), scorer, None, workers=workers))
    elapsed = time.perf_counter() - start
    assert scored == len(texts), f"{scorer.name}: {scored}/{len(texts)} scored"
    return len(texts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=2000, help="number of ~20-token texts")
    parser.add_argument("--long", type=int, default=200, help="number of ~1000-token texts")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    words = load_words()
    calibrated, profanity = CalibratedScorer(), ProfanityScorer()
    rates: dict[int, tuple[float, float]] = {}
    for tokens, count in ((20, args.short), (1000, args.long)):
        texts = make_texts(words, count, tokens)
        ours, theirs = bench(calibrated, texts, args.workers), bench(profanity, texts, args.workers)
        rates[tokens] = (ours, theirs)
        print(f"{tokens:>5}-token texts x {count}: calibrated {ours:,.1f} texts/s, profanity {theirs:,.1f} texts/s "
              f"(ratio {ours / theirs:.3f}; {args.workers} workers, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    ours, theirs = rates[1000]
    print(f"ratio={ours / theirs:.4f}")


if __name__ == "__main__":
    main()
