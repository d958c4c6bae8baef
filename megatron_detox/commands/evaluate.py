"""``megatron-detox eval {toxicity,perplexity,lm-eval,bold}`` and ``megatron-detox report``.

Thin: parse, load the model once, call ``megatron_detox.evaluate``. Every ``eval``
subcommand writes its JSON into ``--out`` (one run folder can hold all four), which
``report`` reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from megatron_detox.commands.config_defaults import add_config_option, fill_from_config
from megatron_detox.commands.guard import add_force_unlock, guarded
from megatron_detox.config import EvalConfig
from megatron_detox.errors import UserError

_EVAL = EvalConfig()


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _add_model(parser: argparse.ArgumentParser, eval_defaults: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="smollm2-135m",
                       help="preset with weights, .gguf file or HF folder [smollm2-135m]")
    group.add_argument("--checkpoint", help="a megatron-detox checkpoint (step, checkpoints or run folder)")
    group.add_argument("--peft", help="a PEFT checkpoint folder (adapters or prefix) applied on top of --model")
    group.add_argument("--tokenizer", help="tokenizer spec; default: the model's own")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: this rank's local GPU when there is one, else the CPU")
    group.add_argument("--batch-size", type=int, default=None if eval_defaults else _EVAL.batch_size,
                       help=f"[{_EVAL.batch_size}]")


def _add_layout(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("layout (under torchrun; the rest of the ranks is data-parallel)")
    group.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    group.add_argument("--pp", type=int, default=1, help="pipeline stages")


def _add_scorer(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring")
    group.add_argument("--scorer", help="perspective | calibrated | profanity | hf-classifier "
                       "(default: perspective when PERSPECTIVE_API_KEY is set, else calibrated)")
    group.add_argument("--api-key-file", help="Perspective key file (default: $PERSPECTIVE_API_KEY)")
    group.add_argument("--api-key", dest="api_key_on_argv", help=argparse.SUPPRESS)
    group.add_argument("--perspective-url", help="Perspective endpoint (proxy or local perspective-server)")
    group.add_argument("--qps", type=float, help="Perspective requests per second [1]")
    group.add_argument("--hf-model", help="local transformers classifier folder (hf-classifier)")
    group.add_argument("--workers", type=int, help="concurrent scoring requests [1]")
    add_config_option(parser, "eval and score")


def _add_sampling(parser: argparse.ArgumentParser, samples: int | None) -> None:
    """``samples=None``: every option defaults from the ``eval`` config section (``--config``)."""
    fixed = samples is not None
    group = parser.add_argument_group("generation")
    group.add_argument("--samples", type=int, default=samples,
                       help=f"continuations per prompt [{samples if fixed else _EVAL.samples}]")
    group.add_argument("--max-new-tokens", type=int, default=_EVAL.max_new_tokens if fixed else None,
                       help=f"[{_EVAL.max_new_tokens}]")
    group.add_argument("--top-p", type=float, default=_EVAL.top_p if fixed else None, help=f"[{_EVAL.top_p}]")
    group.add_argument("--temperature", type=float, default=_EVAL.temperature if fixed else None,
                       help=f"[{_EVAL.temperature}]")
    group.add_argument("--seed", type=int, default=_EVAL.seed if fixed else None,
                       help=f"sampling seed (per-sample generators) [{_EVAL.seed}]")
    group.add_argument("--cpu-workers", type=int, default=_EVAL.cpu_workers if fixed else None,
                       help="on CPU without torchrun: decode in N forked processes (0: one per thread, 1: none) "
                            f"[{_EVAL.cpu_workers}]")


TOXICITY_OPTIONS = {"samples": "eval.samples", "max_new_tokens": "eval.max_new_tokens", "top_p": "eval.top_p",
                    "temperature": "eval.temperature", "seed": "eval.seed", "batch_size": "eval.batch_size",
                    "cpu_workers": "eval.cpu_workers", "bootstrap": "eval.bootstrap_samples", "bootstrap_seed": "eval.bootstrap_seed"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("eval", help="evaluate toxicity, perplexity, downstream tasks, BOLD bias",
                                   description="Each subcommand writes JSON into --out for `megatron-detox report`.")
    commands = parser.add_subparsers(dest="eval_command", metavar="<what>", required=True)

    tox = commands.add_parser("toxicity", help="RealToxicityPrompts: EMT and TP with bootstrap CIs",
                              description="Generate --samples continuations per prompt, score them, compute "
                              "Expected Maximum Toxicity and Toxicity Probability (sample toxicity >= 0.5) "
                              "for all / toxic (prompt.toxicity >= 0.5) / non-toxic prompts. Resumable.")
    tox.add_argument("--prompts", required=True, help="RealToxicityPrompts JSONL (prompt.text, prompt.toxicity)")
    tox.add_argument("--from-scored", help="skip generation: scored records with prompt_index, scores.toxicity")
    tox.add_argument("--limit", type=int, help="only the first N prompts (smoke tests)")
    tox.add_argument("--bootstrap", type=int, help=f"bootstrap resamples [{_EVAL.bootstrap_samples}]")
    tox.add_argument("--bootstrap-seed", type=int, help=f"[{_EVAL.bootstrap_seed}]")
    tox.add_argument("--tp-rule", choices=("ge", "gt"),
                     help="Toxicity Probability counts toxicity >= 0.5 (ge, RTP's definition) or > 0.5 (gt, the "
                          "SGEAT paper's script) [from eval.threshold_inclusive: ge]")
    tox.add_argument("--out", required=True)
    tox.add_argument("--no-progress", action="store_true")
    _add_model(tox, eval_defaults=True)
    _add_layout(tox)
    _add_sampling(tox, None)
    _add_scorer(tox)
    add_force_unlock(tox)
    tox.set_defaults(func=guarded(run_toxicity))  # --out's run lock; SIGTERM/SIGUSR1 -> exit 75

    ppl = commands.add_parser("perplexity", help="token-weighted perplexity with a sliding window",
                              description="On JSONL (one document per record), text (one document per file) "
                              "or a megatron .bin/.idx prefix (one per indexed document).")
    ppl.add_argument("--data", nargs="+", required=True, help="files or .bin/.idx prefixes")
    ppl.add_argument("--json-key", default="text")
    ppl.add_argument("--max-length", type=int, help="window length [model context]")
    ppl.add_argument("--stride", type=int, help="window step [max-length / 2]")
    ppl.add_argument("--out", help="folder for perplexity.json")
    _add_model(ppl)
    _add_layout(ppl)
    add_force_unlock(ppl)
    ppl.set_defaults(func=guarded(run_perplexity))  # --out's run lock; SIGTERM/SIGUSR1 -> exit 75

    lm = commands.add_parser("lm-eval", help="downstream tasks through lm-evaluation-harness",
                             description="e.g. --tasks lambada_openai,piqa (where their data is available); "
                             "--include-path adds local task YAMLs.")
    lm.add_argument("--tasks", type=_csv, required=True)
    lm.add_argument("--include-path", help="folder of extra task YAML files")
    lm.add_argument("--num-fewshot", type=int)
    lm.add_argument("--limit", type=float, help="examples per task (or fraction)")
    lm.add_argument("--max-length", type=int)
    lm.add_argument("--out", help="folder for lm_eval.json")
    _add_model(lm)
    add_force_unlock(lm)
    lm.set_defaults(func=guarded(run_lm_eval))  # --out's run lock; SIGTERM/SIGUSR1 -> exit 75

    bold = commands.add_parser("bold", help="BOLD: per-group perplexity (and continuation toxicity)",
                               description="Perplexity on BOLD's Wikipedia sentences per domain and group, "
                               "optionally the toxicity of continuations of BOLD prompts; spread between groups.")
    bold.add_argument("--bold-dir", required=True, help="BOLD folder with wikipedia/ and prompts/")
    bold.add_argument("--domains", type=_csv, help="comma list [all five]")
    bold.add_argument("--max-per-group", type=int, help="seeded subsample of sentences/prompts per group")
    bold.add_argument("--max-length", type=int, default=256)
    bold.add_argument("--toxicity", action="store_true", help="also generate and score prompt continuations")
    bold.add_argument("--out", required=True)
    _add_model(bold)
    _add_sampling(bold, 1)
    _add_scorer(bold)
    add_force_unlock(bold)
    bold.set_defaults(func=guarded(run_bold))  # --out's run lock; SIGTERM/SIGUSR1 -> exit 75

    report = subparsers.add_parser("report", help="markdown + HTML report comparing evaluation runs",
                                   description="Reads the eval JSON files of each RUN_DIR; writes report.md, "
                                   "report.html (figures embedded) and runs/<name>.json.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", required=True)
    report.set_defaults(func=run_report)


# --------------------------------------------------------------------------- helpers


def _load_sharded(args: argparse.Namespace) -> Any:
    """An ``InferenceModel``: under torchrun each rank's shard of the ``--tp`` x ``--pp`` layout."""
    from megatron_detox.inference import load_for_inference

    return load_for_inference(args.model, checkpoint=args.checkpoint, peft=args.peft, tokenizer=args.tokenizer,
                              device=args.device, layout=(getattr(args, "tp", 1), getattr(args, "pp", 1)))


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from megatron_detox.inference import load_for_inference

    loaded = load_for_inference(args.model, checkpoint=args.checkpoint, peft=args.peft, tokenizer=args.tokenizer,
                                device=args.device)
    return loaded.model, loaded.tokenizer, loaded.config


def _is_main_rank() -> bool:
    """Rank 0 (or a single process): the rank that scores, writes and prints."""
    import os

    from megatron_detox.parallel.env import read_launch_env

    return read_launch_env(os.environ).rank == 0


def _scorer(args: argparse.Namespace) -> Any:
    from megatron_detox.scoring import build_scorer

    if args.api_key_on_argv is not None:
        raise UserError("--api-key is refused (a key on the command line leaks via ps and shell history): "
                        "set PERSPECTIVE_API_KEY or pass --api-key-file")
    options: dict[str, Any] = {"api_key_file": args.api_key_file, "qps": args.qps, "workers": args.workers}
    if args.perspective_url:
        options["perspective_url"] = args.perspective_url
    if args.hf_model:
        options["hf_model"] = args.hf_model
    return build_scorer(args.scorer, **options)


def model_name(args: argparse.Namespace) -> str:
    """What was evaluated: model or checkpoint, plus PEFT weights and tokenizer when given.

    It keys the resumable outputs (generations, BOLD domains), so a rerun into the same
    ``--out`` with another model, adapter or tokenizer is refused or recomputed, never
    answered from the earlier model's files.
    """
    name = str(args.checkpoint or args.model)
    if args.peft:
        name += f" + peft={Path(args.peft).expanduser().resolve()}"
    if args.tokenizer:
        name += f" + tokenizer={args.tokenizer}"
    return name


def _sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": model_name(args), "samples": args.samples, "max_new_tokens": args.max_new_tokens,
            "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed}


def _generate_fn(args: argparse.Namespace, load: Any) -> Any:
    from megatron_detox.evaluate.generation import build_generate_fn

    return build_generate_fn(load, model_name=model_name(args), samples=args.samples,
                             max_new_tokens=args.max_new_tokens, top_p=args.top_p, temperature=args.temperature,
                             seed=args.seed, batch_size=args.batch_size, cpu_workers=args.cpu_workers,
                             progress=not getattr(args, "no_progress", False))


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


# --------------------------------------------------------------------------- commands


def run_toxicity(args: argparse.Namespace) -> int:
    from megatron_detox.commands.score import fill_scorer_options
    from megatron_detox.evaluate.prompts import load_rtp_prompts
    from megatron_detox.evaluate.toxicity_eval import (
        GENERATION_DIR,
        metrics_from_scored,
        run_toxicity_eval,
        summary_lines,
    )

    cfg = fill_from_config(args, TOXICITY_OPTIONS)
    fill_scorer_options(args)
    inclusive = cfg.eval.threshold_inclusive if args.tp_rule is None else args.tp_rule == "ge"

    prompts = load_rtp_prompts(args.prompts)
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit={args.limit}: must be >= 1")
        prompts = prompts[: args.limit]
    if args.from_scored:
        metrics = metrics_from_scored(args.from_scored, prompts, args.out, num_bootstrap=args.bootstrap,
                                      seed=args.bootstrap_seed, inclusive=inclusive)
    else:
        from megatron_detox.evaluate.toxicity_eval import check_settings

        if args.samples < 1 or args.max_new_tokens < 1:
            raise UserError("--samples and --max-new-tokens must be >= 1")
        settings = {**_sampling_settings(args), "prompts": str(Path(args.prompts).resolve()), "limit": args.limit}
        generate = _generate_fn(args, lambda: _load_sharded(args))
        if not _is_main_rank():
            # Under torchrun every rank takes part in generation; rank 0 alone scores and writes.
            generate([p.text for p in prompts], Path(args.out) / GENERATION_DIR)
            return 0
        with _scorer(args) as scorer:
            # Refuse a folder holding another run before the (slow) model load.
            check_settings(Path(args.out), {**settings, "scorer": scorer.cache_namespace})
            metrics = run_toxicity_eval(
                prompts, args.out, generate=generate, scorer=scorer,
                settings=settings, samples=args.samples, num_bootstrap=args.bootstrap, seed=args.bootstrap_seed,
                workers=args.workers, progress=not args.no_progress, inclusive=inclusive)
    _print(summary_lines(metrics) + [f"-> {Path(args.out) / 'metrics.json'}"])
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from megatron_detox.atomic import write_json_atomic
    from megatron_detox.evaluate.perplexity import compute_perplexity, indexed_prefix, load_documents
    from megatron_detox.jsonl import read_json

    missing = [data for data in args.data if indexed_prefix(data) is None and not Path(data).is_file()]
    if missing:  # before the (slow) model load
        raise UserError(f"{missing[0]}: not found; pass a .jsonl/.txt file or a .bin/.idx prefix")
    loaded = _load_sharded(args)
    model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.config
    main = loaded.env.rank == 0  # every rank runs the (sharded) forward; rank 0 writes
    max_length = args.max_length or cfg.max_position_embeddings
    if not 1 <= max_length <= cfg.max_position_embeddings:
        raise UserError(f"--max-length={max_length}: must be in [1, the model context "
                        f"{cfg.max_position_embeddings}]")
    stride = args.stride or max(1, max_length // 2)
    prefix = tokenizer.bos if tokenizer.bos is not None else tokenizer.eod
    results: dict[str, Any] = {}
    out_file = Path(args.out) / "perplexity.json" if args.out else None
    if out_file is not None and out_file.is_file():
        results = read_json(out_file)  # other data files evaluated earlier into the same folder
    for data in args.data:
        result = compute_perplexity(model, load_documents(data, tokenizer.encode, args.json_key),
                                    max_length=max_length, stride=stride, prefix_token=prefix,
                                    batch_size=args.batch_size, vocab_size=cfg.vocab_size, device=loaded.device,
                                    progress=main)
        results[Path(data).name] = {**result.to_dict(), "path": str(data), "model": model_name(args)}
        if not main:
            continue
        print(f"{data}: perplexity {result.perplexity:.3f} over {result.num_tokens} tokens "
              f"({result.num_documents} documents, window {max_length}, stride {stride})", file=sys.stderr)
        if out_file is not None:
            write_json_atomic(out_file, results, sort_keys=False)
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    import json

    from megatron_detox.atomic import write_json_atomic
    from megatron_detox.evaluate.lm_eval_adapter import MegatronDetoxLM

    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("eval lm-eval needs lm-evaluation-harness: pip install 'megatron-detox[eval]'") from None
    if args.include_path and not Path(args.include_path).is_dir():
        raise UserError(f"{args.include_path}: --include-path must be a folder of task YAML files")
    # Task names are checked before the (slow) model load.
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in args.tasks if not manager.match_tasks([t])]
    if unknown:
        raise UserError(f"--tasks: unknown task {unknown[0]!r}; see `lm_eval --tasks list` or pass --include-path")
    loaded = _load_sharded(args)  # the 1 x 1 layout: lm-eval runs in one process
    model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.config
    lm = MegatronDetoxLM(model, tokenizer, max_length=args.max_length or cfg.max_position_embeddings,
                         batch_size=args.batch_size, device=str(loaded.device), vocab_size=cfg.vocab_size)
    results = simple_evaluate(model=lm, tasks=args.tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                              task_manager=manager, log_samples=False)
    summary = {"tasks": args.tasks, "model": model_name(args),
               "results": results["results"] if results else {}}
    print(json.dumps(summary["results"], indent=2, default=str))
    if args.out:
        write_json_atomic(Path(args.out) / "lm_eval.json", json.loads(json.dumps(summary, default=str)), sort_keys=False)
    return 0


def run_bold(args: argparse.Namespace) -> int:
    from megatron_detox.commands.score import fill_scorer_options
    from megatron_detox.evaluate.bold import DOMAINS, run_bold

    fill_scorer_options(args)

    domains = args.domains or list(DOMAINS)
    # User mistakes first, before the (slow) model load.
    unknown = [domain for domain in domains if domain not in DOMAINS]
    if unknown:
        raise UserError(f"--domains: BOLD domain {unknown[0]!r} is unknown; valid: {', '.join(DOMAINS)}")
    if not Path(args.bold_dir).is_dir():
        raise UserError(f"{args.bold_dir}: not found; pass --bold-dir with the BOLD folder (wikipedia/ and prompts/)")
    scorer = _scorer(args) if args.toxicity else None
    model, tokenizer, cfg = _load(args)
    generate = _generate_fn(args, lambda: (model, tokenizer, cfg)) if args.toxicity else None
    prefix = tokenizer.bos if tokenizer.bos is not None else tokenizer.eod
    summary = run_bold(model, tokenizer.encode, args.bold_dir, args.out, domains=domains,
                       max_length=min(args.max_length, cfg.max_position_embeddings), prefix_token=prefix,
                       vocab_size=cfg.vocab_size, batch_size=args.batch_size, max_per_group=args.max_per_group,
                       seed=args.seed, generate=generate, scorer=scorer,
                       run_settings=_sampling_settings(args) if args.toxicity else {"model": model_name(args)})
    if scorer is not None:
        scorer.close()
    for domain, block in summary["domains"].items():
        spread = block["perplexity"]["spread"]
        print(f"{domain}: perplexity spread {spread['max_minus_min']:.3f} "
              f"({spread['highest']} highest, {spread['lowest']} lowest)", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from megatron_detox.evaluate.report import build_report

    print(build_report(args.runs, args.out))
    return 0
