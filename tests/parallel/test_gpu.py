"""On a CUDA machine: bf16 training vs fp32, generation on the GPU vs the CPU, NCCL tensor parallelism.

Marked ``gpu`` (deselected by default: ``pytest -m gpu``); each also skips where CUDA is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distributed import free_port

from megatron_detox.models.config import ModelConfig

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CFG = ModelConfig(name="tiny-gpu", num_layers=2, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=256, vocab_size=300, make_vocab_size_divisible_by=64, max_position_embeddings=128,
                  position_embedding="rope", normalization="rmsnorm", activation="swiglu", add_bias_linear=False,
                  tie_word_embeddings=True, init_method_std=0.1)
PROMPTS = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6], [42, 17]]


def _step_loss_and_grads(precision: str) -> tuple[float, dict[str, torch.Tensor]]:
    from megatron_detox.config import ParallelConfig
    from megatron_detox.parallel.env import init_distributed
    from megatron_detox.parallel.model import build_parallel_model

    env = init_distributed(ParallelConfig(), CFG, env={}, device="cuda")
    model = build_parallel_model(CFG, ParallelConfig(), env, seed=3, micro_batch_size=4, num_microbatches=1,
                                 precision=precision)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CFG.vocab_size, (4, 65), generator=gen)
    loss = model.forward_backward(tokens[:, :-1], tokens[:, 1:])
    return float(loss), model.full_gradients()


@needs_cuda
def test_bf16_train_step_matches_fp32() -> None:
    loss32, grads32 = _step_loss_and_grads("fp32")
    loss16, grads16 = _step_loss_and_grads("bf16")
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    for name, grad in grads32.items():
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grads16[name].flatten(), dim=0)
        assert cosine > 0.99, name


def _greedy(model: torch.nn.Module) -> list[list[int]]:
    from megatron_detox.generate.engine import generate_batch
    from megatron_detox.generate.sampling import SamplingParams

    out = generate_batch(model, PROMPTS, list(range(len(PROMPTS))), SamplingParams(greedy=True), max_new_tokens=12,
                         vocab_size=CFG.vocab_size, head_dim=CFG.head_dim, seed=1)
    return [g.tokens for g in out]


@needs_cuda
def test_generation_on_gpu_equals_cpu_greedy() -> None:
    from megatron_detox.models.loading import build_model

    cpu = build_model(CFG, seed=5).eval()
    gpu = build_model(CFG, seed=5, device="cuda").eval()  # fp32: the same math, another device
    assert next(gpu.parameters()).is_cuda
    assert _greedy(gpu) == _greedy(cpu)


def _nccl_tp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import os

    from megatron_detox.config import ParallelConfig
    from megatron_detox.generate.parallel import shard_for_generation
    from megatron_detox.models.loading import build_model
    from megatron_detox.parallel.env import init_distributed

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    env = init_distributed(ParallelConfig(tp=world_size), CFG, device="cuda")
    assert env.device == torch.device("cuda", rank)
    model = build_model(CFG, seed=5, device=env.device).eval()
    runner, _ = shard_for_generation(model, env)
    tokens = _greedy(runner)
    if rank == 0:
        torch.save(tokens, out)
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_tp2_generation_equals_one_gpu(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from megatron_detox.models.loading import build_model

    out = tmp_path / "tokens.pt"
    mp.spawn(_nccl_tp_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    expected = _greedy(build_model(CFG, seed=5, device="cuda").eval())
    assert torch.load(out, weights_only=True) == expected
