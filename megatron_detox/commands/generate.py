"""``megatron-detox generate``: print a continuation, or run the SGEAT self-generation stage.

    megatron-detox generate --prompt "The capital of France is" --max-new-tokens 8 --greedy
    megatron-detox generate --prompts rtp.jsonl --repeat 25 --max-new-tokens 20 --out runs/eval/gen
    megatron-detox generate --unconditional 100000 --max-new-tokens 1000 --out runs/sgeat/gen

Under ``torchrun`` the ids are split over the data-parallel ranks; rerunning the same
command after a kill resumes. Defaults come from the ``generate`` config section.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from megatron_detox.commands.config_defaults import add_config_option, fill_from_config
from megatron_detox.commands.guard import add_force_unlock, guarded
from megatron_detox.config import GenerateConfig
from megatron_detox.errors import UserError

_DEFAULTS = GenerateConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="sample from a model (prompt, prompt file or unconditional)",
                                   description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("model")
    source.add_argument("--model", default="smollm2-135m",
                        help="a preset with weights, a .gguf file or a Hugging Face folder (default smollm2-135m)")
    source.add_argument("--checkpoint", help="a checkpoint of ours (step, checkpoints or run folder); overrides --model")
    source.add_argument("--peft", help="a PEFT checkpoint folder (adapters or prefix) applied on top of --model")
    source.add_argument("--tokenizer", help="tokenizer spec when the model does not name a usable one")
    source.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="weights and activations (default auto: bf16 on a GPU, fp32 on the CPU)")
    source.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: this rank's local GPU when there is one, else the CPU")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt; prints its continuation")
    what.add_argument("--prompts", help="JSONL prompt file (with --out)")
    what.add_argument("--unconditional", type=int, metavar="N", help="N samples from BOS (with --out)")
    parser.add_argument("--prompt-key", help=f"dotted key of the prompt text [{_DEFAULTS.prompt_key}]")
    parser.add_argument("--repeat", type=int, help=f"samples per prompt [{_DEFAULTS.repeat}]")
    parser.add_argument("--num-prompts", type=int, help=f"only the first N prompts (0: all) [{_DEFAULTS.num_prompts}]")
    parser.add_argument("--allow-empty-prompts", action="store_true", help="generate from BOS for empty prompts")
    parser.add_argument("--out", help="output folder (shards, generations.jsonl, manifest.json)")
    parser.add_argument("--max-new-tokens", type=int, help=f"[{_DEFAULTS.max_new_tokens}]")
    parser.add_argument("--temperature", type=float, help=f"[{_DEFAULTS.temperature}]")
    parser.add_argument("--top-p", type=float, help=f"[{_DEFAULTS.top_p}]")
    parser.add_argument("--top-k", type=int, help=f"[{_DEFAULTS.top_k}: off]")
    parser.add_argument("--greedy", action="store_true", default=None)
    parser.add_argument("--seed", type=int, help=f"[{_DEFAULTS.seed}]")
    parser.add_argument("--batch-size", type=int, help=f"[{_DEFAULTS.batch_size}]")
    parser.add_argument("--cpu-workers", type=int,
                        help="on CPU without torchrun: decode in N forked processes, threads and batch shared out "
                             f"(0: one per thread, 1: none) [{_DEFAULTS.cpu_workers}]")
    parser.add_argument("--ignore-eos", action="store_true", default=None,
                        help="always generate --max-new-tokens tokens")
    add_config_option(parser, "generate")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (~40 s to compile; it keeps torch's GEMMs, so on CPU it "
                             "forgoes the faster K-major decode linears: see docs/benchmarks.md)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (under torchrun)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages (under torchrun)")
    parser.add_argument("--no-progress", action="store_true")
    add_force_unlock(parser)
    parser.set_defaults(func=guarded(run))  # --out's run lock; SIGTERM/SIGUSR1 -> exit 75 (requeue)


GENERATE_OPTIONS = {name: f"generate.{name}" for name in (
    "max_new_tokens", "temperature", "top_p", "top_k", "greedy", "seed", "batch_size", "prompt_key", "repeat",
    "ignore_eos", "num_prompts", "cpu_workers")}


def _check_args(args: argparse.Namespace) -> None:
    fill_from_config(args, GENERATE_OPTIONS)
    if args.prompt is None and args.out is None:
        raise UserError("--out: required with --prompts or --unconditional (the folder for the records)")
    for name in ("max_new_tokens", "batch_size", "repeat"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    for name in ("num_prompts", "cpu_workers"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 0")
    if args.unconditional is not None and args.unconditional < 1:
        raise UserError(f"--unconditional={args.unconditional}: must be >= 1")
    if not args.greedy and args.temperature <= 0:
        raise UserError(f"--temperature={args.temperature}: must be > 0 (use --greedy for argmax)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p={args.top_p}: must be in (0, 1]")
    if args.top_k < 0:
        raise UserError(f"--top-k={args.top_k}: must be >= 0")


def context_length(args: argparse.Namespace) -> int | None:
    """The model's context, read cheaply (no weights) where possible."""
    from megatron_detox.models.presets import PRESETS

    if args.checkpoint:
        from megatron_detox.train.checkpoint import model_config_from_meta, read_meta, resolve_checkpoint

        ckpt = resolve_checkpoint(args.checkpoint)
        return model_config_from_meta(read_meta(ckpt), ckpt).max_position_embeddings
    if args.model in PRESETS:
        return PRESETS[args.model].max_position_embeddings
    path = Path(args.model).expanduser()
    if (path / "config.json").is_file():
        try:
            hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
            return int(hf.get("max_position_embeddings") or hf.get("n_positions"))
        except (ValueError, TypeError):
            return None
    return None  # a GGUF: checked after loading


def run(args: argparse.Namespace) -> int:
    from megatron_detox.generate import (
        GenerationSpec,
        SamplingParams,
        complete,
        decode_one_token,
        default_stop_ids,
        prompt_items,
        read_prompts,
        run_generation_stage,
        unconditional_items,
    )

    _check_args(args)
    # Cheap checks first: a bad prompt file or length must not wait for the model to load.
    context = context_length(args)
    if context is not None and args.max_new_tokens >= context:
        raise UserError(f"--max-new-tokens={args.max_new_tokens}: the model context is {context} tokens "
                        "(prompt included); ask for fewer")
    if args.prompts is not None:
        items = prompt_items(read_prompts(args.prompts, args.prompt_key, args.allow_empty_prompts,
                                          args.num_prompts), args.repeat)
    elif args.unconditional is not None:
        items = unconditional_items(args.unconditional)

    from megatron_detox.inference import load_for_inference

    # Under torchrun every rank builds the model on meta and reads only its own shard.
    loaded = load_for_inference(args.model, checkpoint=args.checkpoint, peft=args.peft, tokenizer=args.tokenizer,
                                dtype=args.dtype, device=args.device, layout=(args.tp, args.pp))
    model, tokenizer, cfg, described = loaded.model, loaded.tokenizer, loaded.config, loaded.source
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, greedy=args.greedy)
    stops = () if args.ignore_eos else default_stop_ids(tokenizer, cfg)
    spec = GenerationSpec.for_model(params, tokenizer, cfg, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                    stop_ids=stops)
    step = torch.compile(decode_one_token, dynamic=True) if args.compile else decode_one_token

    if args.prompt is not None and args.out is None:
        (text,) = complete(model, tokenizer, [args.prompt], spec, decode_step=step)
        print(args.prompt + text)
        return 0
    if args.prompt is not None:
        items = prompt_items([args.prompt], args.repeat)

    layout = loaded.layout
    settings = {"model": described, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "greedy": args.greedy,
                "stop_ids": list(stops), "source": str(Path(args.prompts).resolve()) if args.prompts else
                ("prompt" if args.prompt is not None else "unconditional"), "prompt_key": args.prompt_key,
                "repeat": args.repeat, "num_samples": len(items),
                "dtype": "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"}
    merged = run_generation_stage(model, tokenizer, items, args.out, spec, settings=settings,
                                  batch_size=args.batch_size, dp_rank=layout.dp_rank, dp_size=layout.dp_size,
                                  writer_rank=layout.writer_rank, merger_rank=layout.merger_rank,
                                  barrier=loaded.barrier, agree_batch_size=loaded.agree_batch_size,
                                  decode_step=step, progress=not args.no_progress, cpu_workers=args.cpu_workers)
    if merged is not None:
        print(f"generate: wrote {len(items)} samples to {merged}", file=sys.stderr)
    return 0
