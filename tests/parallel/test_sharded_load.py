"""The sharded loader: every layout gets exactly the plain model's weights, and no rank holds the whole model.

The memory test loads a ~1.2 GB (fp32) random model from a DCP checkpoint and from an
HF safetensors folder in one process, on TP2 and on PP2, and compares each rank's peak
RSS growth (``ru_maxrss`` after loading minus before it) with the one-process growth.
"""

from __future__ import annotations

import dataclasses
import json
import resource
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed import run_distributed

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig

TINY = ModelConfig(name="tiny-llama", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                   ffn_hidden_size=128, vocab_size=300, make_vocab_size_divisible_by=64,
                   max_position_embeddings=128, position_embedding="rope", normalization="rmsnorm",
                   activation="swiglu", add_bias_linear=False, tie_word_embeddings=True, init_method_std=0.3)
PROMPTS = [[5, 9, 13], [7, 1, 2, 3]]


def write_sources(folder: Path, cfg: ModelConfig, seed: int = 3) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A random model of ``cfg`` as a DCP run folder and as an HF folder (with a tokenizer)."""
    from generate.conftest import train_tokenizer
    from safetensors.torch import save_file

    from megatron_detox.models.hf_keys import to_hf_state_dict
    from megatron_detox.models.loading import build_model
    from megatron_detox.train.checkpoint import model_shape, save_checkpoint

    model = build_model(cfg, seed=seed)
    state = model.state_dict()
    meta = {"model": model_shape(cfg), "model_config": dataclasses.asdict(cfg), "method": "full"}
    save_checkpoint(folder / "run", 1, {"model": state}, meta, rank=0, keep_last=1)
    hf = folder / "hf"
    hf.mkdir()
    hf_config, hf_state = to_hf_state_dict(cfg, state)
    (hf / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    save_file(hf_state, str(hf / "model.safetensors"))
    train_tokenizer().save(str(hf / "tokenizer.json"))
    expected = {name: tensor.clone() for name, tensor in state.items()}
    return folder / "run", hf, expected


def _peak_kib() -> int:
    """This process's peak RSS (KiB). ``VmHWM``, not ``ru_maxrss``: the latter survives
    ``exec`` and so starts at the high-water mark of the pytest process that spawned us."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: KiB on most Unixes


def load_worker(rank: int, world_size: int, kind: str, path: str, tokenizer: str, tp: int, pp: int,
                gather: bool, new_tokens: int) -> dict[str, Any]:
    """Load on ``(tp, pp)``; the peak RSS growth of this rank, greedy tokens, and (``gather``) full weights."""
    from megatron_detox.inference import load_for_inference
    from megatron_detox.parallel.state import gather_full_state_dict

    before = _peak_kib()
    source = {"checkpoint": path} if kind == "dcp" else {"model": path}
    loaded = load_for_inference(**source, tokenizer=tokenizer, device="cpu", layout=(tp, pp))
    growth = (_peak_kib() - before) * 1024
    part = getattr(loaded.model, "part", loaded.model)
    result: dict[str, Any] = {"growth": growth, "layers": sorted(int(k) for k in part.layers),
                              "tokens": greedy_tokens(loaded, new_tokens)}
    if gather:
        mesh = loaded.env.mesh
        group = mesh["pp"].get_group() if mesh is not None and pp > 1 else None
        result["state"] = gather_full_state_dict([part], group)
    return result


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    return write_sources(tmp_path_factory.mktemp("sharded_tiny"), TINY)


def greedy_tokens(loaded: Any, new_tokens: int) -> list[list[int]]:
    from megatron_detox.generate.engine import generate_batch
    from megatron_detox.generate.sampling import SamplingParams

    cfg = loaded.config
    out = generate_batch(loaded.model, PROMPTS, list(range(len(PROMPTS))), SamplingParams(greedy=True),
                         max_new_tokens=new_tokens, vocab_size=cfg.vocab_size, head_dim=cfg.head_dim, seed=1)
    return [g.tokens for g in out]


@pytest.mark.distributed
@pytest.mark.parametrize(("kind", "tp", "pp"), [
    ("dcp", 2, 1),
    pytest.param("hf", 1, 2, marks=pytest.mark.slow), pytest.param("hf", 2, 1, marks=pytest.mark.slow),
    pytest.param("dcp", 1, 2, marks=pytest.mark.slow),
])
def test_each_layout_loads_the_plain_weights(tiny_sources: tuple[Path, Path, dict[str, torch.Tensor]], kind: str,
                                             tp: int, pp: int) -> None:
    from megatron_detox.inference import load_for_inference

    run, hf, expected = tiny_sources
    path, tokenizer = run if kind == "dcp" else hf, str(hf / "tokenizer.json")
    one = load_for_inference(**({"checkpoint": path} if kind == "dcp" else {"model": str(path)}),
                             tokenizer=tokenizer, device="cpu")
    results = run_distributed(load_worker, 2, kind, str(path), tokenizer, tp, pp, True, 6)
    rows = TINY.vocab_size if kind == "hf" else TINY.padded_vocab_size  # HF files drop the padding rows
    for result in results:
        for name, tensor in expected.items():
            got = result["state"][name]
            if name in ("tok_embeddings.weight", "output.weight"):
                got, tensor = got[:rows], tensor[:rows]
            torch.testing.assert_close(got, tensor, rtol=0, atol=0, msg=name)
        assert result["tokens"] == greedy_tokens(one, 6)
    if pp == 2:  # each stage read and holds only its own layers
        assert [r["layers"] for r in results] == [[0, 1], [2, 3]]


def test_a_tensor_of_the_wrong_shape_is_a_user_error(tmp_path: Path) -> None:
    from megatron_detox.inference import load_for_inference

    _, hf, _ = write_sources(tmp_path, TINY)
    config = json.loads((hf / "config.json").read_text())
    config["intermediate_size"] = 96  # the file's MLP weights are 128 wide
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="shape"):
        load_for_inference(str(hf), device="cpu")


# A tiny-config model widened to ~300M parameters: 1.2 GB in fp32, no tensor above 16 MB.
BIG = TINY.replace(num_layers=18, hidden_size=1024, num_attention_heads=16, num_query_groups=16,
                   ffn_hidden_size=4096, init_method_std=0.02, max_position_embeddings=64)
RSS_RATIO = 0.65


@pytest.mark.slow
@pytest.mark.distributed
def test_no_rank_holds_the_whole_model(tmp_path: Path) -> None:
    run, hf, expected = write_sources(tmp_path, BIG)
    model_bytes = sum(t.numel() * t.element_size() for n, t in expected.items() if n != "output.weight")
    assert model_bytes > 1.1e9
    del expected
    tokenizer = str(hf / "tokenizer.json")
    for kind, path in (("dcp", run), ("hf", hf)):
        (one,) = run_distributed(load_worker, 1, kind, str(path), tokenizer, 1, 1, False, 4)
        assert one["growth"] > 0.9 * model_bytes  # the measurement sees the model
        for tp, pp in ((2, 1), (1, 2)):
            results = run_distributed(load_worker, 2, kind, str(path), tokenizer, tp, pp, False, 4)
            for rank, result in enumerate(results):
                ratio = result["growth"] / one["growth"]
                print(f"{kind} tp={tp} pp={pp} rank {rank}: peak RSS growth {result['growth'] / 2**30:.2f} GiB, "
                      f"one process {one['growth'] / 2**30:.2f} GiB, ratio {ratio:.2f}")
                assert ratio < RSS_RATIO, (kind, tp, pp, rank, ratio)
                assert result["tokens"] == one["tokens"]
