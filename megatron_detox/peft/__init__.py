"""Parameter-efficient tuning as module surgery: bottleneck adapters and prefix KV-injection.

``apply_peft(model, model_cfg, method, peft_cfg)`` on the plain model (before any
parallelism) puts the PEFT modules into the model's seams and freezes the rest;
``save_peft_from_model``/``load_peft_checkpoint`` move only the PEFT tensors.
"""

from megatron_detox.peft.adapters import BottleneckAdapter, adapter_num_params, apply_adapters
from megatron_detox.peft.checkpoint import (
    gather_peft_state,
    load_peft_checkpoint,
    merge_peft_checkpoint,
    read_peft_checkpoint,
    save_peft_checkpoint,
    save_peft_from_model,
)
from megatron_detox.peft.prefix import (
    PrefixKV,
    apply_prefix,
    fill_prefix_cache,
    init_prefix_from_tokens,
    prefix_init_tokens,
    prefix_length,
    prefix_num_params,
    prefix_state_from_tokens,
)
from megatron_detox.peft.surgery import (
    apply_peft,
    closed_form_trainable,
    init_peft_weights,
    is_peft_name,
    load_peft_state,
    mark_trainable,
    peft_initial_values,
    peft_state_dict,
    peft_transform,
    trainable_parameters,
)

__all__ = [
    "BottleneckAdapter", "PrefixKV", "adapter_num_params", "apply_adapters", "apply_peft", "apply_prefix",
    "closed_form_trainable", "fill_prefix_cache", "init_prefix_from_tokens", "prefix_init_tokens",
    "prefix_state_from_tokens", "gather_peft_state", "init_peft_weights", "is_peft_name",
    "load_peft_checkpoint", "load_peft_state", "mark_trainable", "merge_peft_checkpoint", "peft_initial_values",
    "peft_state_dict", "peft_transform", "prefix_length", "prefix_num_params", "read_peft_checkpoint", "save_peft_checkpoint",
    "save_peft_from_model", "trainable_parameters",
]
