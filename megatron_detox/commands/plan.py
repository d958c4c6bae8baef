"""``megatron-detox plan``: memory, FLOPs and time of a layout, a layout search, an SGEAT run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_detox.config import RunConfig, load_config
from megatron_detox.errors import UserError
from megatron_detox.models.presets import PRESETS
from megatron_detox.plan.estimate import DEFAULT_EFFICIENCY, plan_training
from megatron_detox.plan.hardware import GPUS, get_device
from megatron_detox.plan.layout import PRECISIONS, RECOMPUTE, Layout
from megatron_detox.plan.report import format_plan, format_search, format_sgeat
from megatron_detox.plan.search import search_layouts
from megatron_detox.plan.sgeat import estimate_sgeat


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="memory per GPU, FLOPs, bubble and step time of a layout; --search for layouts; --sgeat for a run",
        description="On paper, before the job is queued: does the layout fit, how fast will it run. "
                    "Exit code 1 when the layout does not fit. See docs/planner.md.",
    )
    parser.add_argument("--model", required=True, help=f"a preset ({', '.join(PRESETS)}) or a run config YAML "
                                                       "(its model, peft, sgeat and eval sections are used)")
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--vpp", type=int, default=1, help="model chunks per pipeline rank (interleaved 1F1B)")
    parser.add_argument("--dp-shard", type=int, default=1, help="FSDP degree within data parallel (1: replicas)")
    parser.add_argument("--seq", type=int, help="sequence length (default: the model's, at most 2048)")
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--recompute", choices=RECOMPUTE, default="none")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--gpu", default="a100-80g", help=f"one of {', '.join(GPUS)}")
    parser.add_argument("--method", choices=("full", "adapter", "prefix"), default="full")
    parser.add_argument("--distributed-optimizer", action="store_true",
                        help="ZeRO-1: optimizer states sharded over the data-parallel ranks")
    parser.add_argument("--no-sequence-parallel", action="store_true")
    parser.add_argument("--core-attention", action="store_true",
                        help="attention scores materialized (Megatron core attention) instead of flash attention")
    parser.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    parser.add_argument("--mfu", type=float, help="step time at this model-FLOPs utilization instead of the model")
    parser.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                        help="fraction of peak the matmuls reach (default %(default)s)")
    parser.add_argument("--search", action="store_true", help="rank every layout for --gpus that fits")
    parser.add_argument("--top", type=int, default=5, help="layouts --search prints")
    parser.add_argument("--sgeat", action="store_true", help="also estimate a whole SGEAT run")
    parser.add_argument("--samples", type=int, help="SGEAT samples to generate (default sgeat.num_samples)")
    parser.add_argument("--new-tokens", type=int, help="tokens per sample (default sgeat.max_new_tokens)")
    parser.add_argument("--score-rate", type=float,
                        help="texts scored per second: a local scorer's rate or the Perspective QPS (default score.qps)")
    parser.add_argument("--eval-prompts", type=int, default=1200, help="RealToxicityPrompts prompts evaluated")
    parser.add_argument("--generation-tp", type=int, default=1, help="tensor parallelism of generation")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.set_defaults(func=run)


def _run_config(model: str) -> RunConfig:
    if model in PRESETS:
        return load_config(None, [f"model.preset={model}"])
    if not Path(model).is_file():
        raise UserError(f"--model {model!r}: neither a preset ({', '.join(PRESETS)}) nor a config file")
    return load_config(model)


def run(args: argparse.Namespace) -> int:
    run_cfg = _run_config(args.model)
    cfg = run_cfg.model.to_model_config()
    device = get_device(args.gpu)
    for flag, value in (("--mfu", args.mfu), ("--efficiency", args.efficiency)):
        if value is not None and not 0 < value <= 1:
            raise UserError(f"{flag} {value}: must be in (0, 1]")
    layout = Layout(
        gpus=args.gpus, tp=args.tp, pp=args.pp, vpp=args.vpp, dp_shard=args.dp_shard,
        seq_length=args.seq or min(cfg.max_position_embeddings, 2048), global_batch=args.global_batch,
        micro_batch=args.micro_batch, recompute=args.recompute, precision=args.precision,
        sequence_parallel=not args.no_sequence_parallel, distributed_optimizer=args.distributed_optimizer,
        flash_attention=not args.core_attention, schedule=args.schedule)
    if args.search:
        plans = search_layouts(cfg, layout, device, args.method, run_cfg.peft, top=args.top)
        print(json.dumps([p.to_dict() for p in plans], indent=2) if args.json else format_search(plans))
        return 0 if plans else 1
    plan = plan_training(cfg, layout, device, args.method, run_cfg.peft, mfu=args.mfu, efficiency=args.efficiency)
    out = plan.to_dict()
    text = format_plan(plan)
    if args.sgeat:
        sgeat = run_cfg.sgeat
        if args.samples is not None:
            sgeat.num_samples = args.samples
        if args.new_tokens is not None:
            sgeat.max_new_tokens = args.new_tokens
        estimate = estimate_sgeat(cfg, device, args.gpus, plan, args.score_rate or run_cfg.score.qps, sgeat,
                                  run_cfg.eval, args.eval_prompts, args.generation_tp, args.precision)
        out["sgeat"] = estimate.to_dict()
        text += "\n" + format_sgeat(estimate)
    print(json.dumps(out, indent=2) if args.json else text)
    return 0 if plan.fits else 1
