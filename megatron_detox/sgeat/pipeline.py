"""``run_pipeline(cfg)``: the SGEAT stages in order, resumable, with a manifest.

For each stage, its *key* is a hash of its settings (the config fields that decide its
output) and of the checksums of its upstream stage's outputs. A stage that finished
with the same key, whose outputs are intact, is skipped; one that was interrupted with
the same key resumes (the stage code is exactly-once); one whose key changed is
cleared and rerun, and the screen says which setting or input changed. Since keys
chain through output checksums, a rerun stage whose output is byte-identical leaves
later stages valid.

Under torchrun every rank runs this function: generation and training run on all
ranks (sharded over the layout), the other stages on rank 0 while the rest wait at a
barrier. Only rank 0 writes the manifest.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_detox.config import RunConfig, dump_yaml, to_dict
from megatron_detox.config import _did_you_mean as did_you_mean
from megatron_detox.errors import UserError
from megatron_detox.sgeat import corpus, evaluation, report, training
from megatron_detox.sgeat.context import RunContext, StageResult
from megatron_detox.sgeat.manifest import (
    STAGES,
    changed_settings,
    file_sha256,
    json_sha256,
    now,
    outputs_intact,
    read_manifest,
    write_manifest,
)


@dataclass(frozen=True)
class Stage:
    name: str
    settings: Callable[[RunContext], dict[str, Any]]
    run: Callable[[RunContext, list[Path]], StageResult]
    all_ranks: bool
    """Generation and training run on every rank; the rest on rank 0 alone."""
    clear_on_change: bool = True


PIPELINE: tuple[Stage, ...] = (
    Stage("generate", corpus.generate_settings, corpus.run_generate, all_ranks=True),
    Stage("score", corpus.score_settings, corpus.run_score, all_ranks=False),
    Stage("filter", corpus.filter_settings, corpus.run_filter, all_ranks=False),
    Stage("preprocess", corpus.preprocess_settings, corpus.run_preprocess, all_ranks=False),
    Stage("train", training.train_settings, training.run_train, all_ranks=True),
    # Per-model folders keyed inside the stage: a new detoxified model keeps the base evaluation.
    Stage("evaluate", evaluation.evaluate_settings, evaluation.run_evaluate, all_ranks=False, clear_on_change=False),
    Stage("report", report.report_settings, report.run_report, all_ranks=False),
)
assert tuple(s.name for s in PIPELINE) == STAGES


def stage_index(name: str | None, option: str, default: int) -> int:
    if name is None:
        return default
    if name not in STAGES:
        raise UserError(f"{option} {name}: unknown stage{did_you_mean(name, list(STAGES))}; "
                        f"stages: {', '.join(STAGES)}")
    return STAGES.index(name)


def check_inputs(ctx: RunContext) -> None:
    """User mistakes that would otherwise surface mid-run: modes, input files, the scorer."""
    cfg = ctx.cfg
    mode, g = cfg.sgeat.mode, cfg.generate
    if cfg.model.pretrained is None:
        raise UserError("model.pretrained: sgeat run needs the weights to detoxify (e.g. smollm2-135m)")
    if mode == "standard":
        if g.prompts is not None:
            raise UserError(f"generate.prompts={g.prompts!r} is set but sgeat.mode=standard generates from BOS; "
                            "set sgeat.mode=prompted (or drop generate.prompts)")
        if g.num_samples < 1:
            raise UserError("generate.num_samples: sgeat.mode=standard needs the number of samples to generate "
                            "(>= 1; the paper: 100000)")
    elif mode == "prompted":
        if g.prompts is None or not Path(g.prompts).is_file():
            raise UserError(f"generate.prompts={g.prompts!r}: sgeat.mode=prompted needs an existing JSONL "
                            "prompt file")
    elif cfg.sgeat.corpus is None or not Path(cfg.sgeat.corpus).is_file():
        raise UserError(f"sgeat.corpus={cfg.sgeat.corpus!r}: sgeat.mode=dapt needs an existing JSONL corpus file")
    training.check_train_config(cfg)
    evaluation.check_eval_inputs(ctx)
    from megatron_detox.scoring.from_config import scorer_from_config

    scorer_from_config(cfg.score).close()  # a bad scorer name or a missing key, before any work


def run_pipeline(cfg: RunConfig, *, from_stage: str | None = None, until_stage: str | None = None,
                 progress: bool = True) -> RunContext:
    """Run (or resume) every stage from ``from_stage`` (forced rerun) to ``until_stage``."""
    first = stage_index(from_stage, "--from-stage", 0)
    last = stage_index(until_stage, "--until-stage", len(STAGES) - 1)
    if first > last:
        raise UserError(f"--from-stage {from_stage} comes after --until-stage {until_stage}")
    ctx = _context(cfg, progress)
    check_inputs(ctx)
    work_dir = ctx.work_dir
    if ctx.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    manifest = read_manifest(work_dir)
    ctx.barrier()  # every rank read the manifest before rank 0 writes it again
    manifest = {"config_hash": json_sha256(dump_yaml(cfg)), "config": to_dict(cfg), "stages": manifest["stages"]}
    ctx.log(f"run folder {work_dir} (config {manifest['config_hash'][:12]}, mode {cfg.sgeat.mode}, "
            f"stages {STAGES[first]}..{STAGES[last]})")
    upstream: list[Path] = []
    for index, stage in enumerate(PIPELINE[:last + 1]):
        upstream = _run_stage(ctx, manifest, index, stage, upstream,
                              force=from_stage is not None and index >= first, prior=index < first)
    return ctx


def _context(cfg: RunConfig, progress: bool) -> RunContext:
    from megatron_detox.parallel.env import read_launch_env

    launch = read_launch_env(os.environ)
    if launch.world_size > 1:
        from megatron_detox.parallel.env import init_distributed

        env = init_distributed(cfg.parallel, cfg.model.to_model_config())
        return RunContext(cfg, Path(cfg.sgeat.work_dir).expanduser(), env.rank, env.world_size, progress)
    return RunContext(cfg, Path(cfg.sgeat.work_dir).expanduser(), 0, 1, progress)


def _run_stage(ctx: RunContext, manifest: dict[str, Any], index: int, stage: Stage, upstream: list[Path], *,
               force: bool, prior: bool) -> list[Path]:
    label = f"[{index + 1}/{len(STAGES)}] {stage.name}"
    settings = stage.settings(ctx)
    inputs = {_name(p, ctx.work_dir): file_sha256(p) for p in upstream}
    key = json_sha256({"settings": settings, "inputs": inputs})
    record = manifest["stages"].get(stage.name)
    up_to_date = (record is not None and record.get("status") == "done" and record.get("key") == key
                  and outputs_intact(record, ctx.work_dir))
    stage_dir = ctx.stage_dir(stage.name)
    if prior:
        if not up_to_date:
            raise UserError(f"--from-stage: stage {stage.name} before it is not finished with the current "
                            "settings; run without --from-stage (finished stages are skipped anyway)")
        ctx.log(f"{label}: skipped, before --from-stage (finished with the same settings and inputs)")
        return _outputs(record, ctx.work_dir)
    if up_to_date and not force:
        ctx.log(f"{label}: skipped, finished earlier with the same settings and inputs "
                f"({record.get('seconds', 0):.1f}s then)")
        return _outputs(record, ctx.work_dir)
    reason = _rerun_reason(record, key, settings, inputs, up_to_date)
    resume = record is not None and record.get("key") == key and record.get("status") != "done"
    if ctx.is_main and not resume and stage.clear_on_change and stage_dir.exists():
        shutil.rmtree(stage_dir)
    if reason:
        later = ", ".join(STAGES[index + 1:])
        ctx.log(f"{label}: {reason}; it reruns" + (f", and so may {later}" if later else ""))
    ctx.log(f"{label}: {'resuming' if resume else 'start'}")
    started = time.perf_counter()
    record = {"status": "running", "key": key, "settings": settings, "inputs": inputs, "started": now(),
              "outputs": {}, "counts": {}}
    manifest["stages"][stage.name] = record
    if ctx.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(ctx.work_dir, manifest)
    ctx.barrier()
    try:
        result = stage.run(ctx, upstream) if stage.all_ranks or ctx.is_main else None
    except BaseException as error:
        record.update(status="failed", error=str(error)[:500] or type(error).__name__, finished=now(),
                      seconds=time.perf_counter() - started)
        if ctx.is_main:
            write_manifest(ctx.work_dir, manifest)
        raise
    ctx.barrier()
    seconds = time.perf_counter() - started
    if ctx.is_main and result is not None:
        record.update(status="done", finished=now(), seconds=seconds, counts=result.counts,
                      outputs={name: file_sha256(path) for name, path in result.outputs.items()})
        write_manifest(ctx.work_dir, manifest)
        ctx.log(f"{label}: done in {seconds:.1f}s: {result.summary}")
    ctx.barrier()
    fresh = read_manifest(ctx.work_dir)  # every rank takes rank 0's record (outputs, checksums)
    manifest["stages"][stage.name] = fresh["stages"][stage.name]
    return _outputs(manifest["stages"][stage.name], ctx.work_dir)


def _rerun_reason(record: dict[str, Any] | None, key: str, settings: dict[str, Any], inputs: dict[str, str],
                  up_to_date: bool) -> str:
    if record is None:
        return ""
    if up_to_date:
        return "rerun requested (--from-stage)"
    if record.get("key") == key:
        return "" if record.get("status") != "done" else "its outputs changed on disk"
    changes = changed_settings(record.get("settings", {}), settings)
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        return f"settings changed ({shown})"
    return "its input changed (the previous stage's output)"


def _name(path: Path, work_dir: Path) -> str:
    """A file as the manifest names it: relative to the run folder when inside it."""
    try:
        return str(path.relative_to(work_dir))
    except ValueError:
        return str(path)


def _outputs(record: dict[str, Any] | None, work_dir: Path) -> list[Path]:
    assert record is not None
    return [Path(name) if Path(name).is_absolute() else work_dir / name for name in record.get("outputs", {})]
