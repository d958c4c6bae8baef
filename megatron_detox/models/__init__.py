"""Plain-PyTorch models: one decoder-only transformer for the GPT and Llama families."""

from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.models.loading import build_model, load_model
from megatron_detox.models.presets import PRESETS, closed_form_num_params, get_preset

__all__ = [
    "KVCache", "ModelConfig", "PRESETS", "Transformer", "build_model", "closed_form_num_params", "get_preset",
    "load_model",
]
