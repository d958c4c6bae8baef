"""Megatron-Core's own ``GPTModel`` strict-loads what the converter writes and computes our logits.

Slow (importing megatron.core takes ~10-30 s on a small CPU box) and CPU-only by patching
the few places megatron.core asks for a CUDA device, inside a spawned process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed import run_distributed

pytest.importorskip("megatron.core")


def _check(rank: int, world: int, root: str) -> dict[str, Any]:
    import megatron.core.utils as mcu  # noqa: PLC0415
    from megatron.core import parallel_state, tensor_parallel  # noqa: PLC0415
    from megatron.core.models.gpt import GPTModel  # noqa: PLC0415
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: PLC0415
    from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: PLC0415
    from megatron_fixture import ours_checkpoint  # noqa: PLC0415

    from megatron_detox.cli import main  # noqa: PLC0415
    from megatron_detox.convert.megatron_load import load_megatron_file  # noqa: PLC0415
    from megatron_detox.models import Transformer  # noqa: PLC0415
    from megatron_detox.models.config import ModelConfig  # noqa: PLC0415

    # CPU stand-ins for megatron.core's CUDA-only helpers (this process only).
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    mcu.GlobalMemoryBuffer.get_tensor = lambda self, shape, dtype, *a, **k: torch.empty(shape, dtype=dtype)
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    parallel_state.initialize_model_parallel(1, 1)
    results: dict[str, Any] = {}
    for family in ("gpt", "llama"):
        cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=300,
                          max_position_embeddings=32)
        if family == "llama":
            cfg = cfg.replace(num_query_groups=2, ffn_hidden_size=48, position_embedding="rope",
                              normalization="rmsnorm", activation="swiglu", add_bias_linear=False,
                              tie_word_embeddings=False, norm_eps=1e-6)
        out = Path(root) / family
        state = ours_checkpoint(out / "ours", cfg)
        assert main(["convert", "--no-progress", "--from", "dcp", "--to", "megatron", "--input", str(out / "ours"),
                     "--output", str(out / "mlm")]) == 0
        shard = load_megatron_file(out / "mlm" / "release" / "mp_rank_00" / "model_optim_rng.pt")
        a = shard["args"]
        config = TransformerConfig(
            num_layers=a.num_layers, hidden_size=a.hidden_size, num_attention_heads=a.num_attention_heads,
            num_query_groups=a.num_query_groups, ffn_hidden_size=a.ffn_hidden_size, kv_channels=a.kv_channels,
            normalization=a.normalization, layernorm_epsilon=a.norm_epsilon, gated_linear_unit=a.swiglu,
            activation_func=torch.nn.functional.silu if a.swiglu else torch.nn.functional.gelu,
            add_bias_linear=a.add_bias_linear, hidden_dropout=0.0, attention_dropout=0.0,
            use_cpu_initialization=True, bias_dropout_fusion=False, bias_activation_fusion=False,
            masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False)
        model = GPTModel(config, get_gpt_layer_local_spec(normalization=a.normalization),
                         vocab_size=a.padded_vocab_size, max_sequence_length=a.max_position_embeddings,
                         position_embedding_type=a.position_embedding_type, rotary_base=a.rotary_base,
                         share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights).eval()
        missing, unexpected = model.load_state_dict(shard["model"], strict=False)
        ours = Transformer(cfg).eval()
        ours.load_state_dict(state)
        tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(1, 1, 16, 16, dtype=torch.bool).triu(1)  # Megatron: True = masked out
        with torch.no_grad():
            theirs = model(tokens, torch.arange(16)[None], mask)[..., :300]
            mine = ours(tokens)[..., :300]
        results[family] = {"missing": [k for k in missing if not k.endswith("_extra_state")],
                           "unexpected": list(unexpected), "diff": (theirs - mine).abs().max().item()}
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_megatron_core_loads_our_output_strictly_with_our_logits(tmp_path: Path) -> None:
    results = run_distributed(_check, 1, str(tmp_path))[0]
    for family, result in results.items():
        assert result["missing"] == [] and result["unexpected"] == [], family
        assert result["diff"] <= 1e-5, (family, result["diff"])
