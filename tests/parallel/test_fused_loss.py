"""Chunked projection + cross-entropy == the plain loss: values, gradients, training losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_corpus import corpus, tiny_gpt_config  # noqa: F401 - corpus is a fixture
from torch import nn

from megatron_detox.config import load_config
from megatron_detox.parallel import fused_loss
from megatron_detox.parallel.fused_loss import fused_loss_applies, linear_cross_entropy_sum
from megatron_detox.parallel.loss import IGNORE_INDEX


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [700, 1200, 1 << 21])  # 5 chunks (7,7,7,7,5) / 3 of 11 / one chunk
@pytest.mark.parametrize("ignored", [True, False])
def test_matches_cross_entropy_of_full_logits(bias: bool, chunk_elements: int, ignored: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    output = nn.Linear(16, 97, bias=bias)
    hidden = torch.randn(3, 11, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 97, (3, 11), generator=gen)
    if ignored:
        labels[0, :4] = IGNORE_INDEX
    expected = F.cross_entropy(output(hidden).flatten(0, 1), labels.reshape(-1), reduction="sum",
                               ignore_index=IGNORE_INDEX)
    (0.3 * expected).backward()
    want = [hidden.grad, output.weight.grad] + ([output.bias.grad] if bias else [])
    hidden.grad = None
    output.zero_grad(set_to_none=True)
    got_loss = linear_cross_entropy_sum(hidden, output, labels)
    (0.3 * got_loss).backward()
    got = [hidden.grad, output.weight.grad] + ([output.bias.grad] if bias else [])
    torch.testing.assert_close(got_loss, expected.detach(), rtol=1e-6, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_fp32_weights_project_then_convert() -> None:
    """float64 weights: logits are projected in the weight's dtype, then taken in fp32."""
    output = nn.Linear(8, 30, dtype=torch.float64)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (2, 5))
    expected = F.cross_entropy(output(hidden).float().flatten(0, 1), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(linear_cross_entropy_sum(hidden, output, labels), expected.detach())


def test_second_backward_through_the_same_loss_is_refused() -> None:
    """The gradients are computed in the forward and scaled in place by the one backward."""
    output = nn.Linear(8, 20)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    loss = linear_cross_entropy_sum(hidden, output, torch.randint(0, 20, (2, 5)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_tied_weight_gets_both_gradients() -> None:
    embedding = nn.Embedding(50, 8)
    output = nn.Linear(8, 50, bias=False)
    output.weight = embedding.weight
    tokens = torch.randint(0, 50, (2, 6))
    F.cross_entropy(output(embedding(tokens)).flatten(0, 1), tokens.reshape(-1), reduction="sum").backward()
    want = embedding.weight.grad.clone()
    embedding.weight.grad = None
    linear_cross_entropy_sum(embedding(tokens), output, tokens).backward()
    torch.testing.assert_close(embedding.weight.grad, want, rtol=1e-5, atol=1e-5)


def test_only_plain_local_linears() -> None:
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda module, inputs, out: out)
    assert fused_loss_applies(nn.Linear(4, 4)) and not fused_loss_applies(hooked) and not fused_loss_applies(None)


def test_training_losses_equal_the_plain_loss(tmp_path: Path, corpus: tuple[Path, str, int],  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron_detox.parallel import model as parallel_model
    from megatron_detox.train import train

    text_file, spec, vocab = corpus

    def losses(name: str) -> dict[int, float]:
        config = tiny_gpt_config(tmp_path / f"{name}.yaml", run_dir=tmp_path / name, text_file=text_file,
                                 tokenizer=spec, vocab_size=vocab, train={"steps": 4, "save_interval": 0})
        return train(load_config(config), progress=False).losses

    fused = losses("fused")
    monkeypatch.setattr(parallel_model, "fused_loss_applies", lambda output: False)
    plain = losses("plain")
    assert fused.keys() == plain.keys() == {1, 2, 3, 4}
    for step in plain:
        assert abs(fused[step] - plain[step]) <= 1e-5, (step, fused[step], plain[step])
