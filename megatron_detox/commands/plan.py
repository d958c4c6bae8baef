"""``megatron-detox plan``: memory, FLOPs and time of a layout, a layout search, an SGEAT run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
    parser.add_argument("--tp", type=int, help="tensor parallel (default 1, or parallel.tp of a config)")
    parser.add_argument("--pp", type=int, help="pipeline stages (default 1, or parallel.pp)")
    parser.add_argument("--vpp", type=int, help="model chunks per pipeline rank, interleaved 1F1B (default 1, or parallel.virtual_stages)")
    parser.add_argument("--dp-shard", type=int, help="FSDP degree within data parallel (default 1: replicas; a config's parallel.dp_shard)")
    parser.add_argument("--seq", type=int, help="sequence length (default: data.seq_length of a config, else the model's, at most 2048)")
    parser.add_argument("--global-batch", type=int, help="required with a preset (default train.global_batch_size)")
    parser.add_argument("--micro-batch", type=int, help="default 1, or train.micro_batch_size")
    parser.add_argument("--recompute", choices=RECOMPUTE, help="default none, or parallel.activation_checkpointing")
    parser.add_argument("--precision", choices=PRECISIONS, help="default bf16, or train.precision")
    parser.add_argument("--gpu", default="a100-80g", help=f"one of {', '.join(GPUS)}")
    parser.add_argument("--method", choices=("full", "adapter", "prefix"), help="default full, or train.method")
    parser.add_argument("--distributed-optimizer", action="store_true",
                        help="ZeRO-1: optimizer states sharded over the data-parallel ranks")
    parser.add_argument("--no-sequence-parallel", action="store_true")
    parser.add_argument("--core-attention", action="store_true",
                        help="attention scores materialized (Megatron core attention) instead of flash attention")
    parser.add_argument("--schedule", choices=("1f1b", "gpipe"), help="default 1f1b, or parallel.pp_schedule")
    parser.add_argument("--mfu", type=float, help="step time at this model-FLOPs utilization instead of the model")
    parser.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                        help="fraction of peak the matmuls reach (default %(default)s)")
    parser.add_argument("--search", action="store_true", help="rank every layout for --gpus that fits")
    parser.add_argument("--top", type=int, default=5, help="layouts --search prints")
    parser.add_argument("--sgeat", action="store_true", help="also estimate a whole SGEAT run")
    parser.add_argument("--samples", type=int, help="SGEAT samples to generate (default generate.num_samples, or the paper's 100000)")
    parser.add_argument("--new-tokens", type=int, help="tokens per sample at most (default generate.max_new_tokens)")
    parser.add_argument("--score-rate", type=float,
                        help="texts scored per second: a local scorer's rate or the Perspective QPS (default score.qps)")
    parser.add_argument("--eval-prompts", type=int, default=1200, help="RealToxicityPrompts prompts evaluated")
    parser.add_argument("--generation-tp", type=int, default=1, help="tensor parallelism of generation")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.set_defaults(func=run)


def _run_config(model: str) -> tuple[RunConfig, bool]:
    """The run config and whether it came from a file (then its fields are the defaults)."""
    if model in PRESETS:
        return load_config(None, [f"model.preset={model}"]), False
    if not Path(model).is_file():
        raise UserError(f"--model {model!r}: neither a preset ({', '.join(PRESETS)}) nor a config file")
    return load_config(model), True


def _layout(args: argparse.Namespace, run_cfg: RunConfig, from_file: bool, max_seq: int) -> Layout:
    """Flags first; then, for a config file, its parallel/train/data fields; then planner defaults."""
    par, train = run_cfg.parallel, run_cfg.train

    def pick(flag: object, from_config: object, default: object) -> Any:
        return flag if flag is not None else (from_config if from_file else default)

    if args.global_batch is None and not from_file:
        raise UserError("--global-batch is required with a preset (a config file gives train.global_batch_size)")
    tp, pp = pick(args.tp, par.tp, 1), pick(args.pp, par.pp, 1)
    vpp = pick(args.vpp, par.virtual_stages, 1)
    dp_shard = args.dp_shard
    if dp_shard is None:
        dp_shard = (par.dp_shard if par.dp_shard > 0 else max(1, args.gpus // max(1, tp * pp))) if from_file else 1
    return Layout(
        gpus=args.gpus, tp=tp, pp=pp, vpp=vpp, dp_shard=dp_shard,
        seq_length=pick(args.seq, run_cfg.data.seq_length, min(max_seq, 2048)),
        global_batch=pick(args.global_batch, train.global_batch_size, None),
        micro_batch=pick(args.micro_batch, train.micro_batch_size, 1),
        recompute=pick(args.recompute, par.activation_checkpointing, "none"),
        precision=pick(args.precision, train.precision, "bf16"),
        sequence_parallel=not args.no_sequence_parallel and (par.sequence_parallel or not from_file),
        distributed_optimizer=args.distributed_optimizer, flash_attention=not args.core_attention,
        schedule=pick(args.schedule, "gpipe" if par.pp_schedule == "gpipe" else "1f1b", "1f1b"))


def run(args: argparse.Namespace) -> int:
    run_cfg, from_file = _run_config(args.model)
    cfg = run_cfg.model.to_model_config()
    device = get_device(args.gpu)
    for flag, value in (("--mfu", args.mfu), ("--efficiency", args.efficiency)):
        if value is not None and not 0 < value <= 1:
            raise UserError(f"{flag} {value}: must be in (0, 1]")
    layout = _layout(args, run_cfg, from_file, cfg.max_position_embeddings)
    method = args.method or (run_cfg.train.method if from_file else "full")
    if args.search:
        plans = search_layouts(cfg, layout, device, method, run_cfg.peft, top=args.top)
        print(json.dumps([p.to_dict() for p in plans], indent=2) if args.json else format_search(plans))
        return 0 if plans else 1
    plan = plan_training(cfg, layout, device, method, run_cfg.peft, mfu=args.mfu, efficiency=args.efficiency)
    out = plan.to_dict()
    text = format_plan(plan)
    if args.sgeat:
        generate = run_cfg.generate
        if args.samples is not None:
            generate.num_samples = args.samples
        if args.new_tokens is not None:
            generate.max_new_tokens = args.new_tokens
        estimate = estimate_sgeat(cfg, device, args.gpus, plan, args.score_rate or run_cfg.score.qps, run_cfg.sgeat,
                                  run_cfg.eval, args.eval_prompts, args.generation_tp, layout.precision,
                                  generate=generate)
        out["sgeat"] = estimate.to_dict()
        text += "\n" + format_sgeat(estimate)
    print(json.dumps(out, indent=2) if args.json else text)
    return 0 if plan.fits else 1
