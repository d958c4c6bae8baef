"""``export hf``: transformers loads the exported folder and computes our logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_corpus import tiny_gpt_config

from megatron_detox.cli import main
from megatron_detox.config import load_config
from megatron_detox.models import Transformer
from megatron_detox.models.state_dict import expected_shapes
from megatron_detox.train import train
from megatron_detox.train.checkpoint import load_plain_model_state

transformers = pytest.importorskip("transformers")

LLAMA = {"position_embedding": "rope", "normalization": "rmsnorm", "activation": "swiglu", "add_bias_linear": False,
         "num_query_groups": 2, "ffn_hidden_size": 96, "tie_word_embeddings": False, "rope_theta": 10000.0}


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_exported_model_matches_our_logits(tmp_path: Path, corpus: tuple[Path, str, int], family: str) -> None:
    text_file, spec, vocab = corpus
    config = tiny_gpt_config(tmp_path / "c.yaml", run_dir=tmp_path / "run", text_file=text_file, tokenizer=spec,
                             vocab_size=vocab, model=LLAMA if family == "llama" else {},
                             train={"steps": 2, "save_interval": 0})
    cfg = load_config(config)
    result = train(cfg, progress=False)
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    assert type(hf).__name__ == ("LlamaForCausalLM" if family == "llama" else "GPT2LMHeadModel")
    model_cfg = cfg.model.to_model_config()
    ours = Transformer(model_cfg).eval()
    ours.load_state_dict(load_plain_model_state(result.checkpoint, model_cfg, sorted(expected_shapes(model_cfg))))
    tokens = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(tokens)[..., :vocab]
        got = hf(tokens).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "hf", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"megatron-detox export: error: {tmp_path}: not a checkpoint (no meta.json), checkpoints "
                   "folder or run folder with checkpoints/latest"]


def test_export_never_replaces_a_folder_that_is_not_an_export(tmp_path: Path, corpus: tuple[Path, str, int],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    text_file, spec, vocab = corpus
    config = tiny_gpt_config(tmp_path / "c.yaml", run_dir=tmp_path / "run", text_file=text_file, tokenizer=spec,
                             vocab_size=vocab, train={"steps": 1, "save_interval": 0})
    train(load_config(config), progress=False)
    capsys.readouterr()  # the preprocessing bar
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    (tmp_path / "afile").write_text("keep me")
    for target, reason in ((tmp_path / "run", "holds 'checkpoints' and is not an earlier export"),
                           (tmp_path, "holds 'afile' and is not an earlier export"),
                           (tmp_path / "afile", "exists and is not a folder")):
        assert main(["export", "hf", str(tmp_path / "run"), str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    assert (tmp_path / "afile").read_text() == "keep me"
    # An earlier export is replaced.
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]


def test_a_model_larger_than_a_shard_exports_as_shards(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    """Streamed group by group into shards + index; the sharded loader reads them back exactly."""
    from megatron_detox.inference import load_for_inference
    from megatron_detox.train.export import export_hf

    text_file, spec, vocab = corpus
    config = tiny_gpt_config(tmp_path / "c.yaml", run_dir=tmp_path / "run", text_file=text_file, tokenizer=spec,
                             vocab_size=vocab, model=LLAMA, train={"steps": 1, "save_interval": 0})
    cfg = load_config(config)
    result = train(cfg, progress=False)
    export_hf(tmp_path / "run", tmp_path / "hf", max_shard_bytes=64 * 1024)
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert "model.safetensors.index.json" in names and sum(n.startswith("model-0") for n in names) > 2
    export_hf(tmp_path / "run", tmp_path / "hf", max_shard_bytes=64 * 1024)  # an earlier (sharded) export is replaced
    model_cfg = cfg.model.to_model_config()
    saved = load_plain_model_state(result.checkpoint, model_cfg, sorted(expected_shapes(model_cfg)))
    loaded = load_for_inference(str(tmp_path / "hf"), tokenizer=spec, device="cpu")
    for name, tensor in loaded.model.state_dict().items():
        rows = vocab if name in ("tok_embeddings.weight", "output.weight") else tensor.shape[0]
        torch.testing.assert_close(tensor[:rows], saved[name][:rows], rtol=0, atol=0, msg=name)
