"""The train stage: ``train.train`` on the preprocessed corpus, in ``<work_dir>/train``.

Every ``model``, ``parallel``, ``data``, ``optim``, ``train`` and ``peft`` field reaches the
trainer as written, except two the pipeline owns: ``train.run_dir`` (it is
``<sgeat.work_dir>/train``) and the corpus, which is added to ``data.paths`` (so a
user's own unweighted ``data.paths`` and ``data.text_files`` are mixed in).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from megatron_detox.config import RunConfig, TrainConfig
from megatron_detox.errors import UserError
from megatron_detox.sgeat.context import RunContext, StageResult


def check_train_config(cfg: RunConfig) -> None:
    """Refuse the fields the pipeline sets itself, before any stage runs."""
    if cfg.train.run_dir != TrainConfig().run_dir:
        raise UserError(f"train.run_dir={cfg.train.run_dir!r}: sgeat run trains in <sgeat.work_dir>/train; "
                        "remove train.run_dir (set sgeat.work_dir instead)")
    if any(_is_number(item) for item in cfg.data.paths):
        raise UserError(f"data.paths={cfg.data.paths}: sgeat run adds its corpus to data.paths, which cannot be a "
                        "weighted blend; list prefixes without weights")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def train_settings(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    # The layout (parallel.*) is left out: a checkpoint reshards, so a rerun on another
    # layout continues the same run.
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in ("model", "data", "optim", "train", "peft")}


def stage_train_config(ctx: RunContext, corpus_prefix: Path) -> RunConfig:
    cfg = ctx.cfg
    data = dataclasses.replace(cfg.data, paths=[*cfg.data.paths, str(corpus_prefix)])
    train = dataclasses.replace(cfg.train, run_dir=str(ctx.stage_dir("train")))
    return dataclasses.replace(cfg, data=data, train=train)


def run_train(ctx: RunContext, upstream: list[Path]) -> StageResult:
    from megatron_detox.train import train
    from megatron_detox.train.checkpoint import latest_checkpoint

    prefix = upstream[0].with_suffix("")
    result = train(stage_train_config(ctx, prefix), progress=ctx.progress)
    if not ctx.is_main:
        return StageResult({}, {}, "")
    if result.stopped_by_signal:
        raise UserError(f"train: stopped by a signal at step {result.step} (checkpoint saved); rerun to continue")
    ckpt = latest_checkpoint(ctx.stage_dir("train"))
    if ckpt is None:
        raise RuntimeError("train finished without a checkpoint")  # internal bug
    loss = _last_loss(ctx.stage_dir("train") / "metrics.jsonl")
    counts = {"steps": result.step, "final_loss": loss, "valid_loss": result.valid_loss,
              "method": ctx.cfg.train.method, "checkpoint": str(ckpt.relative_to(ctx.work_dir))}
    # The weights themselves (and the PEFT folder) are the output the evaluation depends on.
    files = sorted(p for p in ckpt.iterdir() if p.is_file())
    peft = ctx.stage_dir("train") / "peft"
    files += sorted(p for p in peft.iterdir() if p.is_file()) if peft.is_dir() else []
    outputs = {str(p.relative_to(ctx.work_dir)): p for p in files}
    return StageResult(outputs, counts,
                       f"{result.step} steps of {ctx.cfg.train.method} training, final loss "
                       f"{loss:.4f} -> {ckpt}" if loss is not None else f"{result.step} steps -> {ckpt}")


def _last_loss(path: Path) -> float | None:
    from megatron_detox.jsonl import iter_jsonl

    loss = None
    if path.is_file():
        for _, record in iter_jsonl(path):
            loss = record.get("loss", loss)
    return loss
