"""Text reports of plans, searches and SGEAT estimates (the CLI prints these)."""

from __future__ import annotations

from megatron_detox.plan.estimate import TrainingPlan
from megatron_detox.plan.sgeat import GenerationEstimate, SgeatEstimate


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _layout_line(plan: TrainingPlan) -> str:
    lay = plan.layout
    extras = [f"recompute {lay['recompute']}", lay["precision"]]
    if lay["tp"] > 1 and lay["sequence_parallel"]:
        extras.append("sequence parallel")
    if lay["distributed_optimizer"]:
        extras.append("distributed optimizer")
    if not lay["flash_attention"]:
        extras.append("core attention")
    if lay["pp"] > 1:
        extras.append(lay["schedule"] if lay["vpp"] == 1 else f"interleaved 1F1B ({lay['vpp']} chunks)")
    return (f"layout: {lay['description']}, seq {lay['seq_length']}, global batch {lay['global_batch']}, "
            f"micro-batch {lay['micro_batch']} ({plan.num_microbatches} per step per replica), {', '.join(extras)}")


def format_plan(plan: TrainingPlan) -> str:
    mem = plan.memory_per_gpu_gb
    trained = "full training" if plan.method == "full" else (
        f"{plan.method}: {plan.trainable_parameters:,} trainable")
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines = [
        f"{plan.model} ({plan.parameters:,} parameters, {trained}) on {plan.layout['gpus']} x {plan.device}",
        _layout_line(plan),
        f"memory per GPU (pipeline stage {plan.peak_stage}, the most loaded):",
        *(f"  {name:<12} {mem[name]:9.2f} GB" for name in ("weights", "gradients", "optimizer", "activations",
                                                          "buffers")),
        f"  {'total':<12} {mem['total']:9.2f} GB of {plan.usable_gb:.1f} GB usable ({plan.capacity_gb:.1f} GB): "
        f"{verdict}, margin {plan.margin_gb:+.1f} GB",
        f"FLOPs per iteration: {plan.flops_per_iteration:.3e} executed, {plan.model_flops_per_iteration:.3e} "
        "model (without recompute)",
        f"pipeline bubble: {plan.bubble_fraction:.3f} of the ideal step ((p - 1) / (v m))",
        "communication per GPU per step: " + ", ".join(
            f"{k.upper()} {v:.2f} GB" for k, v in plan.communication_gb_per_step.items()),
        f"step time: {_duration(plan.step_time_s)} ({plan.tflops_per_gpu:.0f} TFLOP/s per GPU, MFU "
        f"{plan.mfu:.2f}), {plan.tokens_per_day:.3e} tokens/day",
    ]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def format_search(plans: list[TrainingPlan]) -> str:
    if not plans:
        return "no layout fits"
    header = (f"{'#':>2}  {'layout':<28} {'micro':>5} {'recompute':<9} {'ZeRO-1':<6} {'GB/GPU':>7} "
              f"{'step s':>8} {'MFU':>5} {'tokens/day':>11}")
    lines = [header, "-" * len(header)]
    for rank, plan in enumerate(plans, 1):
        lay = plan.layout
        lines.append(f"{rank:>2}  {lay['description']:<28} {lay['micro_batch']:>5} {lay['recompute']:<9} "
                     f"{'yes' if lay['distributed_optimizer'] else 'no':<6} {plan.memory_per_gpu_gb['total']:>7.1f} "
                     f"{plan.step_time_s:>8.2f} {plan.mfu:>5.2f} {plan.tokens_per_day:>11.3e}")
    return "\n".join(lines)


def _generation_line(what: str, gen: GenerationEstimate) -> str:
    return (f"{what}: {gen.samples:,} x {gen.new_tokens} tokens, batch {gen.batch_size} on {gen.replicas} "
            f"replica(s), {gen.decode_step_s * 1e3:.1f} ms per decode step, {gen.tokens_per_s:,.0f} tokens/s: "
            f"{_duration(gen.total_s)}")


def format_sgeat(estimate: SgeatEstimate) -> str:
    return "\n".join([
        "SGEAT run estimate:",
        "  " + _generation_line("generate", estimate.generation),
        f"  score: {estimate.generation.samples:,} texts: {_duration(estimate.scoring_s)}",
        f"  train: {estimate.training_tokens:,} tokens in {estimate.training_steps:,} steps: "
        f"{_duration(estimate.training_s)}",
        "  " + _generation_line("evaluate (generation)", estimate.evaluation_generation),
        f"  evaluate (scoring): {estimate.evaluation_generation.samples:,} texts: "
        f"{_duration(estimate.evaluation_scoring_s)}",
        f"  total: {_duration(estimate.total_s)}",
    ])
