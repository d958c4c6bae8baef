"""``train(cfg)``: the training loop on every parallel layout, resumable from any kill.

One code path for every layout, the single process included: the model is always a
``ParallelModel`` from ``megatron_detox.parallel``. Global step ``s`` (0-based) reads
train samples ``[s * G, (s + 1) * G)`` (this DP rank its slice) — counted on from the
checkpoint's ``consumed_samples`` when a resumed run changes ``G`` — uses the learning rate
``lr_at(s)``, and after the optimizer step writes one line of ``metrics.jsonl`` with
``step = s + 1``. Checkpoints hold model, optimizer, loss scale, step and RNG states, so
a run killed anywhere and started again with the same command reproduces the same
per-step losses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from megatron_detox.atomic import write_text_atomic
from megatron_detox.config import RunConfig, dump_yaml
from megatron_detox.data import sample_batch
from megatron_detox.errors import UserError
from megatron_detox.parallel import DistEnv, ParallelModel, build_parallel_model, init_distributed
from megatron_detox.preemption import StopFlag
from megatron_detox.runlock import hold_run_lock
from megatron_detox.train.checkpoint import (
    barrier,
    check_compatible,
    latest_checkpoint,
    load_checkpoint_state,
    load_rng_state,
    model_shape,
    read_meta,
    remove_partial_checkpoints,
    save_checkpoint,
)
from megatron_detox.train.loss_scale import DynamicLossScaler, scale_gradients_at
from megatron_detox.train.metrics import MetricsWriter, memory_gib, train_flops_per_token
from megatron_detox.train.optim import build_optimizer, freeze_parameters, lr_at, set_lr
from megatron_detox.train.optim_state import get_optim_state, set_optim_state
from megatron_detox.train.setup import build_datasets, load_pretrained, resolve_tokenizer


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    """Optimizer steps completed (the run's position)."""
    losses: dict[int, float] = field(default_factory=dict)
    """step -> training loss, for the steps this call ran."""
    valid_loss: float | None = None
    checkpoint: Path | None = None
    stopped_by_signal: bool = False
    is_main: bool = True
    """Rank 0 of the job: the one that reports."""


def _batch_layout(cfg: RunConfig, env: DistEnv) -> tuple[int, int, int]:
    """(local batch, micro batch, micro-batches) of this DP rank."""
    t, dp = cfg.train, env.dims.dp_size
    if t.global_batch_size % (dp * t.micro_batch_size):
        raise UserError(f"train.global_batch_size={t.global_batch_size}: must be a multiple of train.micro_batch_size"
                        f"={t.micro_batch_size} x data-parallel size {dp}")
    local = t.global_batch_size // dp
    num_microbatches = cfg.parallel.num_microbatches or local // t.micro_batch_size
    if local % num_microbatches:
        raise UserError(f"parallel.num_microbatches={num_microbatches}: must divide the per-replica batch {local}")
    return local, local // num_microbatches, num_microbatches


def _transform(cfg: RunConfig):  # noqa: ANN202 - Callable[[nn.Module], None]
    model_cfg = cfg.model.to_model_config()

    def transform(model: torch.nn.Module) -> None:
        if cfg.train.method != "full":
            from megatron_detox.peft import peft_transform  # noqa: PLC0415

            # compile=False: with parallel.compile the whole block (adapters included) is compiled.
            peft_transform(model_cfg, cfg.train.method, cfg.peft, seed=cfg.train.seed, compile=False)(model)
        if cfg.train.freeze:
            freeze_parameters(model, cfg.train.freeze)

    return transform


def _initial_values(cfg: RunConfig):  # noqa: ANN202
    if cfg.train.method == "full":
        return None
    from megatron_detox.peft import peft_initial_values  # noqa: PLC0415

    return peft_initial_values(cfg.model.to_model_config(), cfg.train.method, cfg.peft, cfg.train.seed)


def _evaluate(pm: ParallelModel, valid_ds: Any, cfg: RunConfig, env: DistEnv, local: int) -> float:
    """Mean loss over the first ``eval_steps`` global batches of the validation split."""
    dp_rank = env.dims.dp_rank(env.mesh)
    total = 0.0
    for i in range(cfg.train.eval_steps):
        batch = sample_batch(valid_ds, i * cfg.train.global_batch_size + dp_rank * local, local)
        total += float(pm.evaluate_loss(batch["tokens"], batch["labels"], batch["loss_mask"]))
    return total / cfg.train.eval_steps


def _log_step(bar: tqdm, record: dict[str, Any], steps: int) -> None:
    """One Megatron-style line per logged step (above the bar, or alone without it)."""
    line = (f"step {record['step']}/{steps} | loss {record['loss']:.4f} | lr {record['lr']:.3e} | "
            f"grad_norm {record['grad_norm']:.4f} | tokens/s {record['tokens_per_s']:.0f}")
    if "valid_loss" in record:
        line += f" | valid_loss {record['valid_loss']:.4f} | valid_ppl {record['valid_ppl']:.2f}"
    if record.get("skipped"):
        line += " | skipped (overflow)"
    if bar.disable:
        print(line, flush=True)
    else:
        bar.write(line)


def _consumed_samples(meta: dict[str, Any], global_batch_size: int) -> int:
    """Train samples read up to the checkpoint (older metadata: step x this global batch)."""
    data = meta.get("data")
    consumed = data.get("consumed_samples") if isinstance(data, dict) else None
    return int(consumed) if isinstance(consumed, int) else int(meta["step"]) * global_batch_size


def _resume(ckpt: Path, meta: dict[str, Any], pm: ParallelModel, optimizers: list[torch.optim.Optimizer],
            scaler: DynamicLossScaler | None, env: DistEnv) -> int:
    """Load model, optimizer, loss scale and RNG state (resharded to this layout); return the step."""
    state = {"model": pm.model_state_dict(), "optim": get_optim_state(pm, optimizers)}
    load_checkpoint_state(ckpt, state)
    pm.load_model_state_dict(state["model"])
    set_optim_state(pm, optimizers, state["optim"])
    if scaler is not None and meta.get("loss_scaler"):
        scaler.load_state_dict(meta["loss_scaler"])
    load_rng_state(ckpt, env.rank)
    return int(meta["step"])


def train(cfg: RunConfig, *, progress: bool = True, force_unlock: bool = False) -> TrainResult:
    """Train (or continue training) the run in ``cfg.train.run_dir``, holding its run lock
    (rank 0, for the whole job): a second run on the same folder is refused."""
    env = init_distributed(cfg.parallel, cfg.model.to_model_config())
    with hold_run_lock(Path(cfg.train.run_dir).expanduser(), force=force_unlock):
        return _train(cfg, env, progress)


def _train(cfg: RunConfig, env: DistEnv, progress: bool) -> TrainResult:
    t = cfg.train
    model_cfg = cfg.model.to_model_config()
    run_dir = Path(t.run_dir).expanduser()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)
    barrier()

    ckpt = latest_checkpoint(run_dir)
    meta = read_meta(ckpt) if ckpt is not None else None
    if ckpt is not None and meta is not None:
        check_compatible(meta, model_cfg, t.method, ckpt)

    # The data position: samples read before this run (Megatron's consumed_samples), so a
    # resumed run with another global batch size neither repeats nor skips samples.
    start_step = int(meta["step"]) if meta is not None else 0
    start_sample = _consumed_samples(meta, t.global_batch_size) if meta is not None else 0

    tokenizer = resolve_tokenizer(cfg, model_cfg)
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else run_dir / "data_cache"
    train_ds, valid_ds = build_datasets(cfg, tokenizer, cache_dir, is_main=env.is_main,
                                        train_samples=start_sample + max(t.steps - start_step, 0) * t.global_batch_size)

    local, micro, num_microbatches = _batch_layout(cfg, env)
    pretrained = None
    if ckpt is None and cfg.model.pretrained:
        pretrained = load_pretrained(cfg.model.pretrained, model_cfg, t.method)
    pm = build_parallel_model(model_cfg, cfg.parallel, env, seed=t.seed, micro_batch_size=micro,
                              num_microbatches=num_microbatches, pretrained=pretrained,
                              transform=_transform(cfg), precision=t.precision,
                              initial_values=_initial_values(cfg))
    optimizers = [build_optimizer(part.named_parameters(), cfg.optim) for part in pm.parts]
    scaler = (DynamicLossScaler(scale=t.initial_loss_scale, growth_interval=t.loss_scale_window)
              if t.precision == "fp16" else None)
    hooks = [scale_gradients_at(part, scaler) for part in pm.parts] if scaler is not None else []

    start = 0
    if ckpt is not None and meta is not None:
        start = _resume(ckpt, meta, pm, optimizers, scaler, env)

    if env.is_main:  # only now: a start refused above leaves the run's config.yaml as it was
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    metrics = MetricsWriter(run_dir / "metrics.jsonl", resume_step=start, enabled=env.is_main,
                            tensorboard_dir=run_dir / "tensorboard")
    result = TrainResult(run_dir=run_dir, step=start, checkpoint=ckpt, is_main=env.is_main)
    config_hash = hashlib.sha256(dump_yaml(cfg).encode()).hexdigest()[:16]
    dp_rank = env.dims.dp_rank(env.mesh)
    tokens_per_step = t.global_batch_size * cfg.data.seq_length
    flops_per_token = train_flops_per_token(model_cfg, cfg.data.seq_length)
    stop = StopFlag()

    def samples_before(step: int) -> int:
        return start_sample + (step - start_step) * t.global_batch_size

    def checkpoint(step: int) -> None:
        state = {"model": pm.model_state_dict(), "optim": get_optim_state(pm, optimizers)}
        meta_out = {
            "config_hash": config_hash, "model": model_shape(model_cfg),
            "model_config": dataclasses.asdict(model_cfg), "method": t.method,
            "data": {"consumed_samples": samples_before(step), "seq_length": cfg.data.seq_length},
            "layout": env.dims.describe(), "world_size": env.world_size,
            "loss_scaler": scaler.state_dict() if scaler is not None else None,
        }
        if t.method != "full":
            from megatron_detox.peft.checkpoint import peft_metadata, save_peft_from_model  # noqa: PLC0415

            meta_out["peft"] = peft_metadata(model_cfg, t.method, cfg.peft)
            # The small shippable part: PEFT tensors only, loadable on any layout (``--peft``).
            save_peft_from_model(pm.parts, model_cfg, t.method, cfg.peft, run_dir / "peft",
                                 group=env.mesh["pp"].get_group() if env.mesh is not None and env.dims.pp > 1 else None)
        result.checkpoint = save_checkpoint(run_dir, step, state, meta_out, rank=env.rank, keep_last=t.keep_last)

    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not (progress and env.is_main))
    try:
        with stop.installed():
            for step in range(start, t.steps):
                began, began_cpu = time.perf_counter(), time.process_time()
                lr = lr_at(step, t.steps, cfg.optim)
                for optimizer in optimizers:
                    set_lr(optimizer, lr)
                batch = sample_batch(train_ds, samples_before(step) + dp_rank * local, local)
                loss = float(pm.forward_backward(batch["tokens"], batch["labels"], batch["loss_mask"]))
                if scaler is not None:
                    scaler.unscale_(pm.parameters())
                grad_norm = float(pm.clip_grad_norm_(cfg.optim.clip_grad))
                skipped = scaler.update(grad_norm) if scaler is not None else not math.isfinite(grad_norm)
                if not skipped:
                    for optimizer in optimizers:
                        optimizer.step()
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                done = step + 1
                record: dict[str, Any] = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm}
                if t.eval_interval and (done % t.eval_interval == 0 or done == t.steps):
                    result.valid_loss = _evaluate(pm, valid_ds, cfg, env, local)
                    record["valid_loss"] = result.valid_loss
                    record["valid_ppl"] = math.exp(min(result.valid_loss, 50.0))
                elapsed = time.perf_counter() - began
                tflops = flops_per_token * tokens_per_step / elapsed / 1e12
                # cpu_s: this process's CPU seconds for the step; on a shared CPU box it measures
                # the work where wall time also measures the neighbours.
                record.update({"tokens_per_s": tokens_per_step / elapsed, "tflops": tflops,
                               "cpu_s": time.process_time() - began_cpu, "memory_gib": memory_gib(env.device),
                               "skipped": skipped})
                if t.peak_tflops > 0:
                    record["mfu"] = tflops / (t.peak_tflops * env.world_size)
                if scaler is not None:
                    record["loss_scale"] = scaler.scale
                metrics.write(record)
                result.losses[done] = loss
                result.step = done
                bar.update(1)
                if done % max(t.log_interval, 1) == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / elapsed:.0f}")
                    if env.is_main:
                        _log_step(bar, record, t.steps)
                stopping = stop.agreed(env.world_size)
                if stopping or (t.save_interval and done % t.save_interval == 0) or done == t.steps:
                    checkpoint(done)
                if stopping:
                    result.stopped_by_signal = True
                    break
    finally:
        bar.close()
        metrics.close()
        for hook in hooks:
            if hook is not None:
                hook.remove()
    return result
