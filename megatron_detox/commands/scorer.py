"""``megatron-detox scorer train | eval``: fit and evaluate the ``calibrated`` scorer's head."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from megatron_detox.errors import UserError


def _default_data() -> str:
    return os.environ.get("MEGATRON_DETOX_DATA", str(Path("..") / "shared" / "data"))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    scorer = subparsers.add_parser(
        "scorer",
        help="train / evaluate the offline `calibrated` scorer on archived Perspective scores",
        description="Fits or evaluates the calibrated scorer's head on the fixed split (docs/scorers.md).",
    )
    actions = scorer.add_subparsers(dest="scorer_command", metavar="<action>", required=True)

    train = actions.add_parser("train", help="fit the head (deterministic) and write head.safetensors + head.json")
    train.add_argument("--data", default=_default_data(),
                       help="shared data folder [$MEGATRON_DETOX_DATA or ../shared/data]")
    train.add_argument("--out", required=True,
                       help="folder for the head (megatron_detox/scoring/calibrated to update the shipped one)")
    train.add_argument("--alpha", type=float, default=1.0, help="ridge penalty [%(default)s]")
    train.add_argument("--word-bits", type=int, default=16, help="log2 word n-gram hash space [%(default)s]")
    train.add_argument("--char-bits", type=int, default=17, help="log2 char n-gram hash space [%(default)s]")
    train.set_defaults(func=run_train)

    evaluate = actions.add_parser("eval", help="held-out agreement with Perspective, vs profanity; LOSO; bias")
    evaluate.add_argument("--data", default=_default_data(),
                          help="shared data folder [$MEGATRON_DETOX_DATA or ../shared/data]")
    evaluate.add_argument("--head", help="head folder [the one shipped in the package]")
    evaluate.add_argument("--out", help="write the full report as JSON here")
    evaluate.add_argument("--no-profanity", action="store_true", help="skip the profanity columns")
    evaluate.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out retraining")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from megatron_detox.scoring.calibrated.features import FeatureSpec
    from megatron_detox.scoring.calibrated.train import TrainSettings, train_head

    for name in ("word_bits", "char_bits"):
        if not 8 <= getattr(args, name) <= 24:
            raise UserError(f"--{name.replace('_', '-')} must be in 8..24, got {getattr(args, name)}")
    if not args.alpha > 0:
        raise UserError(f"--alpha must be > 0, got {args.alpha}")
    settings = TrainSettings(alpha=args.alpha, spec=FeatureSpec(word_bits=args.word_bits, char_bits=args.char_bits))
    head, _ = train_head(args.data, settings)
    head.save(args.out)
    metrics = head.meta["held_out"]
    for attribute, row in metrics.items():
        print(f"{attribute:18s} spearman={row['spearman']:.3f} auroc={row['auroc'] or float('nan'):.3f} "
              f"mae={row['mae']:.3f} n={row['n']}", file=sys.stderr)
    print(f"trained in {head.train_seconds:.0f}s -> {args.out}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from megatron_detox.atomic import write_json_atomic
    from megatron_detox.scoring.calibrated.report import build_report, render_markdown

    report = build_report(args.data, head_folder=args.head, with_profanity=not args.no_profanity,
                          with_loso=not args.no_loso)
    if args.out:
        write_json_atomic(args.out, report)
    print(render_markdown(report))
    if not args.out:
        print(json.dumps(report["held_out"]["calibrated"]["toxicity"]), file=sys.stderr)
    return 0
