"""Trainable vs total parameters of a PEFT method on each preset (``models --peft``)."""

from __future__ import annotations

from typing import Any

from megatron_detox.config import PeftConfig
from megatron_detox.models.presets import get_preset
from megatron_detox.models.summary import build_meta_model, count_parameters
from megatron_detox.peft.surgery import apply_peft, closed_form_trainable


def peft_rows(names: list[str], method: str, peft_cfg: PeftConfig) -> list[dict[str, Any]]:
    """Per preset: base parameters, trainable PEFT parameters (counted on the meta model,
    checked against the closed form) and their share of the total."""
    rows = []
    for name in names:
        cfg = get_preset(name)
        model = build_meta_model(cfg)
        base = count_parameters(model)
        apply_peft(model, cfg, method, peft_cfg)
        trainable = count_parameters(model, trainable_only=True)
        closed = closed_form_trainable(cfg, method, peft_cfg)
        assert closed == trainable, (name, closed, trainable)  # internal invariant
        total = count_parameters(model)
        rows.append({"name": name, "method": method, "base_parameters": base, "trainable": trainable,
                     "total": total, "trainable_percent": 100.0 * trainable / total})
    return rows


def format_peft_table(rows: list[dict[str, Any]], peft_cfg: PeftConfig, method: str) -> str:
    if method == "adapter":
        a = peft_cfg.adapter
        what = f"adapters: bottleneck={a.bottleneck}, placement={a.placement}, layers={a.layers or 'all'}"
    else:
        p = peft_cfg.prefix
        what = f"prefix: length={p.length}, reparameterize={p.reparameterize}, hidden_size={p.hidden_size}"
    header = f"{'preset':<14} {'base params':>17} {'trainable':>15} {'trainable %':>11}"
    lines = [what, header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['name']:<14} {row['base_parameters']:>17,} {row['trainable']:>15,} "
                     f"{row['trainable_percent']:>10.3f}%")
    return "\n".join(lines)
