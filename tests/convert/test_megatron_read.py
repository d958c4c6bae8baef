"""Megatron-LM checkpoints built here from known weights convert to models with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from megatron_fixture import GPT, LLAMA, Arch, random_weights, reference_logits, write_megatron

from megatron_detox.cli import main
from megatron_detox.convert import open_source
from megatron_detox.convert.groups import tensor_groups
from megatron_detox.models import Transformer
from megatron_detox.train.checkpoint import load_checkpoint_weights

CASES = [  # (arch, tp, pp, checkpoint_version, scheme)
    (GPT, 2, 1, 0, "legacy"),
    (GPT, 2, 2, 1.0, "legacy"),
    (GPT, 2, 2, 3.0, "legacy"),
    (GPT, 2, 2, 3.0, "mcore"),
    (GPT, 2, 1, 3.0, "te"),
    (LLAMA, 2, 2, 3.0, "mcore"),
    (LLAMA, 2, 1, 3.0, "te"),
]


def _ours(root: Path) -> tuple[Transformer, dict[str, torch.Tensor]]:
    source = open_source("megatron", root)
    state: dict[str, torch.Tensor] = {}
    for _, names in tensor_groups(source.cfg):
        state.update(source.read(names))
    if source.cfg.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = Transformer(source.cfg).double().eval()
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    return model, state


@pytest.mark.parametrize(("arch", "tp", "pp", "version", "scheme"), CASES,
                         ids=[f"{'llama' if a.llama else 'gpt'}-tp{t}pp{p}-v{v}-{s}" for a, t, p, v, s in CASES])
def test_logits_match_a_reference_from_the_raw_weights(tmp_path: Path, arch: Arch, tp: int, pp: int,
                                                        version: float, scheme: str) -> None:
    weights = random_weights(arch, seed=tp * 10 + pp)
    root = write_megatron(tmp_path / "mlm", arch, weights, tp, pp, version, scheme)
    model, _ = _ours(root)
    cfg = model.config
    assert (cfg.vocab_size, cfg.kv_heads, cfg.ffn_size, cfg.tie_word_embeddings) == (
        arch.vocab, arch.groups, arch.ffn, not arch.llama)
    tokens = torch.randint(0, arch.vocab, (2, arch.positions), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(tokens)[..., : arch.vocab]
    want = reference_logits(arch, weights, tokens)
    assert (got - want).abs().max().item() <= 1e-5


def test_cli_megatron_to_ours_loads_for_generation(tmp_path: Path) -> None:
    weights = random_weights(GPT, seed=3)
    root = write_megatron(tmp_path / "mlm", GPT, weights, 2, 2, 3.0, "mcore", iteration="release")
    out = tmp_path / "ours"
    assert main(["convert", "--from", "megatron", "--to", "dcp", "--input", str(root), "--output", str(out),
                 "--no-progress"]) == 0
    cfg, state = load_checkpoint_weights(out)
    assert cfg.padded_vocab_size == 384  # 300 re-padded to a multiple of 128 (it was 512 at TP2)
    _, direct = _ours(root)
    for name, tensor in direct.items():
        assert torch.equal(state[name], tensor), name


def test_dry_run_prints_the_mapping_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", LLAMA, random_weights(LLAMA), 2, 2, 3.0, "mcore")
    out = tmp_path / "hf"
    assert main(["convert", "--from", "megatron", "--to", "hf", "--input", str(root), "--output", str(out),
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not out.exists()
    row = next(line for line in lines if "layers.3.attention.k_proj.weight" in line)
    assert row.split() == ["decoder.layers.1.self_attention.linear_qkv.weight", "@", "mp_rank_00_001", "(x2", "TP)",
                           "->", "layers.3.attention.k_proj.weight", "[16,", "32]", "->",
                           "model.layers.3.self_attn.k_proj.weight"]
