"""``megatron-detox sgeat run CONFIG [key=value ...]``, ``sgeat status RUN_DIR`` and ``sgeat compare RUN_DIR ...``."""

from __future__ import annotations

import argparse

from megatron_detox.commands.guard import add_force_unlock, guard
from megatron_detox.sgeat.manifest import STAGES


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("sgeat", help="the whole SGEAT pipeline as one resumable command",
                                   description="generate -> score -> filter -> preprocess -> train -> evaluate "
                                               "-> report, in sgeat.work_dir (manifest.json).")
    commands = parser.add_subparsers(dest="sgeat_command", metavar="<run|status|compare>", required=True)
    run = commands.add_parser("run", help="run or resume the pipeline",
                              description="Rerun the same command to resume: finished stages with unchanged "
                                          "settings and inputs are skipped; a changed setting reruns its stage "
                                          "and those after it. Under torchrun every rank runs this command.")
    run.add_argument("config", help="YAML config (e.g. configs/sgeat/quick.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. generate.num_samples=128")
    run.add_argument("--from-stage", metavar="S", help=f"rerun from stage S ({', '.join(STAGES)})")
    run.add_argument("--until-stage", metavar="S", help="stop after stage S")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines stay)")
    add_force_unlock(run)
    run.set_defaults(func=run_sgeat)
    status = commands.add_parser("status", help="the state of a run folder (safe while it runs)")
    status.add_argument("run_dir", help="the run's sgeat.work_dir")
    status.set_defaults(func=run_status)
    compare = commands.add_parser("compare", help="several runs' detoxified models against their common base",
                                  description="EMT/TP with CIs and perplexity of the base model and each run's "
                                              "detoxified model, and the paired EMT changes (e.g. SGEAT vs DAPT).")
    compare.add_argument("run_dirs", nargs="+", help="sgeat.work_dir of each run (same base evaluation)")
    compare.add_argument("--bootstrap-samples", type=int, default=None,
                         help="bootstrap resamples (default: the runs' eval.bootstrap_samples)")
    compare.add_argument("--bootstrap-seed", type=int, default=None,
                         help="bootstrap seed (default: the runs' eval.bootstrap_seed)")
    compare.set_defaults(func=run_compare)


def run_sgeat(args: argparse.Namespace) -> int:
    from megatron_detox.config import load_config
    from megatron_detox.sgeat import run_pipeline
    from megatron_detox.sgeat.pipeline import stage_index

    # Stage names first: a typo must not wait for the config, let alone the model.
    stage_index(args.from_stage, "--from-stage", 0)
    stage_index(args.until_stage, "--until-stage", 0)
    cfg = load_config(args.config, args.overrides)
    # One run per folder (rank 0 holds the lock); SIGTERM/SIGUSR1 flush and exit 75 for a requeue.
    with guard(cfg.sgeat.work_dir, force=args.force_unlock):
        run_pipeline(cfg, from_stage=args.from_stage, until_stage=args.until_stage, progress=not args.no_progress)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from megatron_detox.sgeat.status import format_status

    print(format_status(args.run_dir))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from megatron_detox.sgeat.compare import compare_table

    print(compare_table([Path(d) for d in args.run_dirs], args.bootstrap_samples, args.bootstrap_seed))
    return 0
