"""Training: the loop (``train``), AdamW + LR schedules, DCP checkpoints, metrics, HF export.

``train``/``TrainResult`` are imported on first use: the loop pulls in megatron-core
(seconds to import), which readers of checkpoints (``train.checkpoint``) do not need.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from megatron_detox.train import trainer  # noqa: PLC0415

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
