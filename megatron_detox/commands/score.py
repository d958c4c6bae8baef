"""``megatron-detox score | filter | perspective-server``: parse and call ``megatron_detox.scoring``.

The Perspective key is read from ``$PERSPECTIVE_API_KEY`` or ``--api-key-file``
only; ``--api-key VALUE`` is refused without echoing the value.
"""

from __future__ import annotations

import argparse
import logging
import sys

from megatron_detox.commands.config_defaults import add_config_option, fill_from_config
from megatron_detox.commands.guard import add_force_unlock, guarded
from megatron_detox.errors import UserError
from megatron_detox.scoring import protocol
from megatron_detox.scoring.base import DEFAULT_ATTRIBUTES
from megatron_detox.scoring.registry import SCORER_NAMES


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _label_map(value: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in _csv(value)]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError("expected label=attribute[,label=attribute...]")
    return {old: new for old, new in pairs}


def _add_scorer_options(parser: argparse.ArgumentParser, *, client: bool) -> None:
    group = parser.add_argument_group("offline scorers")
    group.add_argument("--hf-model", help="local transformers sequence-classification folder")
    group.add_argument("--hf-batch-size", type=int, default=32)
    group.add_argument("--hf-max-length", type=int, default=512, help="tokens per text")
    group.add_argument("--hf-label-map", type=_label_map, help="rename labels, e.g. toxic=toxicity")
    group.add_argument("--device", default="cpu", help="torch device of the hf-classifier")
    group.add_argument("--calibrated-head", help="head folder of the calibrated scorer [the one in the package]")
    if not client:
        return
    group = parser.add_argument_group("Perspective client")
    group.add_argument(
        "--perspective-url", help=f"endpoint (proxy or a local `perspective-server`) [{protocol.DEFAULT_URL}]"
    )
    group.add_argument("--api-key-file", help="file holding the key (default: $PERSPECTIVE_API_KEY)")
    # Present only to refuse it: a key on the command line leaks via ps and shell history,
    # and without this option argparse would take `--api-key` as `--api-key-file`.
    group.add_argument("--api-key", dest="api_key_on_argv", metavar="(refused)", help=argparse.SUPPRESS)
    group.add_argument("--qps", type=float, help="global request rate (quota) [1]")
    group.add_argument(
        "--attributes", type=_csv, help=f"comma list [{','.join(DEFAULT_ATTRIBUTES)}]"
    )
    group.add_argument("--languages", type=_csv, default=("en",), help="comma list; '' = auto-detect [en]")
    group.add_argument(
        "--max-bytes", type=int, default=protocol.DEFAULT_MAX_BYTES, help="UTF-8 bytes sent per text [%(default)s]"
    )
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per request [%(default)s]")
    group.add_argument("--max-attempts", type=int, default=6, help="per text, per run [%(default)s]")
    group.add_argument("--backoff-base", type=float, default=1.0, help="seconds [%(default)s]")
    group.add_argument("--backoff-max", type=float, default=60.0, help="seconds [%(default)s]")


SCORER_OPTIONS = {"scorer": "score.scorer", "workers": "score.workers", "qps": "score.qps",
                  "attributes": "score.attributes", "perspective_url": "score.perspective_url",
                  "api_key_file": "score.api_key_file", "hf_model": "score.hf_classifier_path"}


def fill_scorer_options(args: argparse.Namespace) -> None:
    """Options left out on the command line come from ``--config``'s score section (or its defaults)."""
    fill_from_config(args, {dest: f for dest, f in SCORER_OPTIONS.items() if hasattr(args, dest)})
    if args.scorer == "auto":
        args.scorer = None  # the registry's choice: Perspective with a key, else its offline default
    if hasattr(args, "perspective_url") and args.perspective_url is None:
        args.perspective_url = protocol.DEFAULT_URL
    if hasattr(args, "attributes"):
        args.attributes = tuple(args.attributes)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    score = subparsers.add_parser(
        "score",
        help="add toxicity scores to a JSONL file (resumable, exactly once)",
        description="Scores every record's text; rerun the same command after a crash to resume.",
    )
    score.add_argument(
        "--scorer", choices=SCORER_NAMES, help="default: perspective if PERSPECTIVE_API_KEY is set, else calibrated"
    )
    score.add_argument("--input", required=True)
    score.add_argument("--output", required=True)
    score.add_argument("--text-key", default="text", help="field holding the text; dotted paths allowed")
    score.add_argument("--workers", type=int, help="concurrent requests/batches [1]")
    add_config_option(score, "score")
    score.add_argument("--cache", help="SQLite score cache [<output>.scores.sqlite]")
    score.add_argument(
        "--retry-rejected", action="store_true", help="ask again for texts the scorer rejected earlier (cached 400s)"
    )
    score.add_argument("--no-progress", action="store_true")
    add_force_unlock(score)
    _add_scorer_options(score, client=True)
    score.set_defaults(func=guarded(run_score, file=True))  # --output's lock; SIGTERM/SIGUSR1 -> exit 75

    filt = subparsers.add_parser(
        "filter",
        help="keep the least-toxic fraction of scored records",
        description="Ranks scored records by --attribute; unscored records are reported, never kept.",
    )
    filt.add_argument("--input", required=True)
    filt.add_argument("--output", required=True)
    filt.add_argument("--keep-fraction", type=float, default=0.5)
    filt.add_argument("--attribute", default="toxicity")
    filt.add_argument("--stats", help="stats JSON path [<output dir>/filter_stats.json]")
    filt.set_defaults(func=run_filter)

    server = subparsers.add_parser(
        "perspective-server",
        help="serve Perspective's API locally from an offline scorer",
        description="POST /v1alpha1/comments:analyze on loopback; fault injection for testing.",
    )
    server.add_argument("--host", default="127.0.0.1", help="bind address [loopback]")
    server.add_argument("--port", type=int, default=8080)
    server.add_argument("--scorer", choices=("calibrated", "profanity", "hf-classifier"), default="calibrated")
    server.add_argument("--log", help="JSONL request log (arrival time, status, fault)")
    server.add_argument("--max-text-bytes", type=int, default=protocol.DOCUMENTED_MAX_BYTES)
    server.add_argument("--languages", type=_csv, default=("en",), help="supported languages [en]")
    server.add_argument(
        "--missing-attributes",
        choices=("substitute", "reject"),
        default="substitute",
        help="attributes the scorer lacks: answer with its toxicity, or 400",
    )
    _add_scorer_options(server, client=False)
    faults = server.add_argument_group("fault injection")
    faults.add_argument("--rate-limit-qps", type=float, help="answer 429 above this rate")
    faults.add_argument("--retry-after", type=float, help="Retry-After seconds sent with 429")
    faults.add_argument("--p-429", type=float, default=0.0, help="probability a 429 burst starts")
    faults.add_argument("--burst-429", type=int, default=1, help="429s per burst")
    faults.add_argument("--p-5xx", type=float, default=0.0)
    faults.add_argument("--p-drop", type=float, default=0.0, help="drop the connection")
    faults.add_argument("--p-malformed", type=float, default=0.0, help="200 with broken JSON")
    faults.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    faults.add_argument("--p-slow", type=float, default=0.0)
    faults.add_argument("--slow", type=float, default=0.0, help="extra seconds of a slow answer")
    faults.add_argument("--seed", type=int, default=0)
    server.set_defaults(func=run_server)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def run_score(args: argparse.Namespace) -> int:
    from megatron_detox.scoring import ScoreCache, build_scorer, score_file

    _configure_logging()
    if args.api_key_on_argv is not None:
        raise UserError(
            "--api-key is refused (a key on the command line leaks via ps and shell history): "
            "set PERSPECTIVE_API_KEY or pass --api-key-file"
        )
    fill_scorer_options(args)
    scorer = build_scorer(
        args.scorer,
        api_key_file=args.api_key_file,
        perspective_url=args.perspective_url,
        attributes=args.attributes,
        languages=args.languages,
        qps=args.qps,
        max_bytes=args.max_bytes,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        backoff_base_s=args.backoff_base,
        backoff_max_s=args.backoff_max,
        workers=args.workers,
        hf_model=args.hf_model,
        hf_batch_size=args.hf_batch_size,
        hf_max_length=args.hf_max_length,
        hf_label_map=args.hf_label_map,
        device=args.device,
        calibrated_head=args.calibrated_head,
    )
    cache_path = args.cache or args.output + ".scores.sqlite"
    with scorer, ScoreCache(cache_path) as cache:
        if args.retry_rejected:
            cache.forget_errors(scorer.cache_namespace)
        summary = score_file(
            args.input,
            args.output,
            scorer,
            cache,
            args.text_key,
            workers=args.workers,
            progress=not args.no_progress,
        )
    print(
        f"scored {summary.num_scored}/{summary.num_records} records with {scorer.name} "
        f"({summary.num_from_cache} from cache, {summary.num_texts_sent} texts sent, "
        f"{summary.num_errors} errors of which {summary.num_retryable_errors} retry on rerun) "
        f"in {summary.elapsed_s:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from megatron_detox.scoring import filter_file

    stats = filter_file(args.input, args.output, args.keep_fraction, args.attribute, args.stats)
    unscored = stats["num_unscored"]
    print(
        f"kept {stats['num_kept']}/{stats['num_scored']} scored records "
        f"({stats['attribute']} <= {stats['threshold']}); "
        f"{unscored} unscored records not kept {stats['num_unscored_by_reason'] if unscored else ''}".rstrip()
        + f" -> {args.output}",
        file=sys.stderr,
    )
    return 0


def run_server(args: argparse.Namespace) -> int:
    from megatron_detox.scoring import FaultConfig, ServerSettings, build_scorer, build_server

    _configure_logging()
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if args.max_text_bytes < 1:
        raise UserError(f"--max-text-bytes must be >= 1, got {args.max_text_bytes}")
    scorer = build_scorer(
        args.scorer,
        hf_model=args.hf_model,
        hf_batch_size=args.hf_batch_size,
        hf_max_length=args.hf_max_length,
        hf_label_map=args.hf_label_map,
        device=args.device,
        calibrated_head=args.calibrated_head,
    )
    try:
        faults = FaultConfig(
            rate_limit_qps=args.rate_limit_qps,
            retry_after_s=args.retry_after,
            p_429=args.p_429,
            burst_429=args.burst_429,
            p_5xx=args.p_5xx,
            p_drop=args.p_drop,
            p_malformed=args.p_malformed,
            delay_s=args.delay,
            p_slow=args.p_slow,
            slow_s=args.slow,
            seed=args.seed,
        )
    except ValueError as error:
        raise UserError(f"perspective-server: {error}") from None
    settings = ServerSettings(
        max_text_bytes=args.max_text_bytes,
        languages=args.languages,
        missing_attributes=args.missing_attributes,
        faults=faults,
    )
    try:
        server, port = build_server(scorer, args.host, args.port, settings, args.log)
    except OSError as error:
        raise UserError(f"{args.host}:{args.port}: cannot bind ({error.strerror}): pick another --port") from None
    print(
        f"serving Perspective API on http://{args.host}:{port}{protocol.API_PATH} "
        f"with {scorer.name} ({scorer.version})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
