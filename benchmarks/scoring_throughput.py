"""Scoring throughput: offline scorer texts/s, and the Perspective client's achieved QPS.

The client runs against the local Perspective-compatible server on loopback
(profanity backend, a small fixed delay per answer to mimic network latency).
Achieved QPS is measured on the server side from its request log (arrivals − 1
over the arrival span). The last line is ``ratio=<achieved QPS / configured QPS>``.

    python benchmarks/scoring_throughput.py [--qps 20] [--requests 300] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from megatron_detox.scoring.faults import FaultConfig
from megatron_detox.scoring.perspective import PerspectiveScorer
from megatron_detox.scoring.pipeline import score_records
from megatron_detox.scoring.profanity import ProfanityScorer
from megatron_detox.scoring.retry import RetryPolicy
from megatron_detox.scoring.server import ServerSettings, read_request_log, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


def load_texts(n: int) -> list[str]:
    """RTP continuations from the shared data when present, else synthetic sentences."""
    data = Path(os.environ.get("MEGATRON_DETOX_DATA", REPO.parent / "shared" / "data"))
    texts: list[str] = []
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        path = data / "rtp" / "decodingtrust" / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                texts.append(record["prompt"]["text"] + record["continuation"]["text"])
    if not texts:
        texts = [f"sample sentence number {i} about the weather and the river" for i in range(1000)]
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" #{i}") for i in range(n)]


def bench_profanity(texts: list[str]) -> float:
    scorer = ProfanityScorer()
    scorer.score(texts[:10])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), scorer.batch_size):
        scorer.score(texts[i : i + scorer.batch_size])
    return len(texts) / (time.perf_counter() - start)


def bench_perspective(texts: list[str], qps: float, workers: int, latency_s: float) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.jsonl"
        settings = ServerSettings(faults=FaultConfig(delay_s=latency_s))
        with serve_in_thread(ProfanityScorer(), settings=settings, log_path=log_path) as server:
            client = PerspectiveScorer(
                None,
                url=server.url,
                qps=qps,
                timeout_s=10,
                retry=RetryPolicy(max_attempts=5, base_delay_s=0.05),
                pool_size=workers,
            )
            records = ({"text": t} for t in texts)
            start = time.perf_counter()
            with client:
                scored = sum("scores" in r for r in score_records(records, client, None, workers=workers))
            client_elapsed = time.perf_counter() - start
        arrivals = sorted(entry["t"] for entry in read_request_log(log_path))
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return achieved, scored, len(texts) / client_elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05, help="server delay per answer (s)")
    parser.add_argument("--offline-texts", type=int, default=5000)
    args = parser.parse_args()

    texts = load_texts(max(args.offline_texts, args.requests))
    rate = bench_profanity(texts[: args.offline_texts])
    print(f"profanity scorer: {rate:,.0f} texts/s ({args.offline_texts} texts, batch 256)")
    unique = list(dict.fromkeys(texts))[: args.requests]
    achieved, scored, client_rate = bench_perspective(unique, args.qps, args.workers, args.latency)
    print(
        f"perspective client vs local server: configured {args.qps:g} QPS, achieved {achieved:.2f} QPS "
        f"(server-side), {client_rate:.2f} texts/s end to end, {scored}/{len(unique)} scored, "
        f"{args.workers} workers, {args.latency * 1000:.0f} ms latency"
    )
    print(f"ratio={achieved / args.qps:.4f}")


if __name__ == "__main__":
    main()
