"""Short CPU training runs on the real SmolLM2-135M and real text: the loss drops, the base does not move."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_detox.config import AdapterConfig, PeftConfig, PrefixConfig
from megatron_detox.models import Transformer
from megatron_detox.peft import apply_peft, trainable_parameters
from megatron_detox.peft.prefix import init_prefix_from_tokens, prefix_init_tokens

STEPS = 3


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path):
    from megatron_detox.models.loading import load_model
    from megatron_detox.tokenizers import load_tokenizer

    model, cfg = load_model("smollm2-135m")
    return model, cfg, load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def corpus(smollm2, shared_data: Path) -> torch.Tensor:
    """8 real WikiText-2 lines, 17 tokens each: ``[8, 17]``."""
    _, _, tokenizer = smollm2
    text = (shared_data / "lm_text" / "wikitext2_tok_valid.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 200][:8]
    return torch.tensor([tokenizer.encode(line)[:17] for line in lines])


def mean_loss(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])  # [batch, seq, vocab]
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def train(model: Transformer, ids: torch.Tensor, lr: float) -> tuple[float, float]:
    with torch.no_grad():
        before = mean_loss(model.eval(), ids).item()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        mean_loss(model, ids).backward()
        optimizer.step()
    with torch.no_grad():
        after = mean_loss(model.eval(), ids).item()
    return before, after


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_peft_training_lowers_the_loss_and_keeps_the_base(smollm2, corpus, method):
    base_model, cfg, tokenizer = smollm2
    model = copy.deepcopy(base_model)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        base_loss = mean_loss(model, corpus).item()
    peft = PeftConfig(adapter=AdapterConfig(bottleneck=16), prefix=PrefixConfig(length=8, hidden_size=64))
    apply_peft(model, cfg, method, peft, seed=0)
    if method == "prefix":  # real-word init (Li & Liang): start from the model reading real text
        init_text = "The following is an article from Wikipedia ."
        init_prefix_from_tokens(model, cfg, prefix_init_tokens(tokenizer.encode(init_text), 8))
    before, after = train(model, corpus, lr=3e-3)
    print(f"{method}: loss {before:.3f} -> {after:.3f} after {STEPS} steps (base model {base_loss:.3f})")
    if method == "adapter":
        assert before == pytest.approx(base_loss, abs=1e-6)  # zero-init adapters start at the base model
    assert after < before - 0.5, (before, after)
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters() if name in base)
    assert all(torch.equal(p, base[name]) for name, p in base_model.named_parameters())
