"""FLOPs of a training iteration, counted per matmul as Narayanan et al. (2021) do.

Per token and layer, the forward pass costs ``2 x`` the weights it multiplies (q, k, v,
output projection, MLP) plus ``2 * 2 * s * h`` for attention scores and the weighted sum
of values (no causal discount); the LM head adds ``2 * h * V``. Backward is twice the
forward; full recompute runs each layer's forward once more (not the LM head), selective
recompute only the attention core. For Megatron GPT (4h MLP, one key/value head per head)
this is exactly Narayanan et al.'s ``72 B s l h^2 (1 + s/(6h) + V/(12 l h))`` without
recompute and ``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` with full recompute.

A frozen base (adapter / prefix training) needs no weight gradients: its backward is one
forward's worth (input gradients only), plus the PEFT weights' own gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_detox.models.config import ModelConfig


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one transformer layer, split as recompute needs them."""

    dense: float
    """Matmuls with weights: q/k/v, output projection, MLP."""
    attention: float
    """Scores and weighted values: 2 * 2 * s * h (the part selective recompute repeats)."""

    @property
    def total(self) -> float:
        return self.dense + self.attention


def layer_forward_flops(cfg: ModelConfig, seq_length: int, prefix_length: int = 0) -> LayerFlops:
    h, kv, f = cfg.hidden_size, cfg.kv_heads * cfg.head_dim, cfg.ffn_size
    mlp_mats = 3 if cfg.activation == "swiglu" else 2
    dense = 2.0 * (2 * h * h + 2 * h * kv + mlp_mats * h * f)
    # Each token attends over the sequence (and any prefix keys/values).
    attention = 2.0 * 2.0 * (seq_length + prefix_length) * h
    return LayerFlops(dense=dense, attention=attention)


def logits_forward_flops(cfg: ModelConfig) -> float:
    return 2.0 * cfg.hidden_size * cfg.padded_vocab_size


@dataclass(frozen=True)
class TrainFlops:
    """Training FLOPs per token, split so a pipeline stage can add up its own share."""

    per_layer: float
    logits: float
    num_layers: int

    @property
    def total(self) -> float:
        return self.num_layers * self.per_layer + self.logits


def train_flops(cfg: ModelConfig, seq_length: int, recompute: str = "none",
                trainable_params: int | None = None, prefix_length: int = 0) -> TrainFlops:
    """FLOPs per trained token of one forward + backward (+ recompute).

    ``trainable_params`` None means every weight trains; otherwise only those (PEFT, spread
    evenly over the layers) get weight gradients, and adapters add their own matmuls.
    """
    layer = layer_forward_flops(cfg, seq_length, prefix_length)
    logits = logits_forward_flops(cfg)
    if trainable_params is None:
        per_layer, peft_forward = 3.0 * layer.total, 0.0
    else:
        # Input gradients through the frozen layers (1x their forward); adapters, which sit on
        # every token's path, cost 2x their forward backward (input and weight gradients).
        # Prefix keys/values are per layer, not per token: their gradients are negligible.
        peft_forward = 2.0 * trainable_params / cfg.num_layers if prefix_length == 0 else 0.0
        per_layer = 2.0 * layer.total + 3.0 * peft_forward
    per_layer += {"none": 0.0, "selective": layer.attention, "full": layer.total + peft_forward}[recompute]
    # The LM head is never recomputed; frozen (PEFT) it needs input gradients only.
    return TrainFlops(per_layer=per_layer, logits=(3.0 if trainable_params is None else 2.0) * logits,
                      num_layers=cfg.num_layers)


def train_flops_per_token(cfg: ModelConfig, seq_length: int, recompute: str = "none",
                          trainable_params: int | None = None, prefix_length: int = 0) -> float:
    return train_flops(cfg, seq_length, recompute, trainable_params, prefix_length).total


def flops_per_iteration(cfg: ModelConfig, seq_length: int, global_batch: int, recompute: str = "none",
                        trainable_params: int | None = None, prefix_length: int = 0) -> float:
    return global_batch * seq_length * train_flops_per_token(cfg, seq_length, recompute, trainable_params,
                                                             prefix_length)


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """One generated (or prefilled) token attending over ``context`` positions: inference cost."""
    layer = layer_forward_flops(cfg, context)
    return cfg.num_layers * layer.total + logits_forward_flops(cfg)
