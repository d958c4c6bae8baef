"""Learning-rate schedules, AdamW parameter groups, freezing, dynamic loss scaling."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_detox.config import OptimConfig
from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.train.loss_scale import DynamicLossScaler
from megatron_detox.train.optim import build_optimizer, freeze_parameters, lr_at, param_groups


def _lrs(total: int, **kwargs: object) -> list[float]:
    cfg = OptimConfig(lr=1.0, min_lr=0.1, **kwargs)  # type: ignore[arg-type]
    return [lr_at(step, total, cfg) for step in range(total)]


def test_warmup_then_cosine_ends_at_min_lr() -> None:
    lrs = _lrs(12, schedule="cosine", warmup_steps=2)
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[-1] == pytest.approx(0.1)
    mid = 2 + (10 - 1) / 2  # halfway through the decay
    assert lr_at(int(mid), 12, OptimConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=2)) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 2) / 9)))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_linear_constant_and_wsd() -> None:
    assert _lrs(11, schedule="linear") == pytest.approx([1.0 - 0.09 * i for i in range(11)])
    assert _lrs(5, schedule="constant", warmup_steps=1) == [1.0] * 5
    wsd = _lrs(20, schedule="wsd", warmup_steps=2, decay_fraction=0.25)
    assert wsd[2:16] == [1.0] * 14  # stable until the last 25 % of the 18 post-warm-up steps
    assert wsd[-1] == pytest.approx(0.1) and wsd[16] < 1.0


def _tiny() -> Transformer:
    return Transformer(ModelConfig(num_layers=2, hidden_size=16, num_attention_heads=2, vocab_size=64,
                                   max_position_embeddings=8))


def test_no_weight_decay_on_norms_and_biases_and_tied_once() -> None:
    model = _tiny()
    groups = param_groups(model.named_parameters(), 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, param in model.named_parameters():
        is_matrix = param.ndim == 2
        assert (id(param) in decayed) == is_matrix, name
        assert (id(param) in plain) == (not is_matrix), name
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    assert model.output.weight is model.tok_embeddings.weight  # tied: one tensor, one slot


def test_freeze_excludes_parameters_and_reports_typos() -> None:
    model = _tiny()
    frozen = freeze_parameters(model, ["tok_embeddings.*", "layers.0.*"])
    assert frozen == 1 + len(list(model.layers["0"].parameters()))
    optimizer = build_optimizer(model.named_parameters(), OptimConfig())
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.tok_embeddings.weight) not in trainable
    assert id(model.layers["1"].mlp.up_proj.weight) in trainable
    with pytest.raises(UserError, match="pattern 'layer.*' matches no parameter"):
        freeze_parameters(_tiny(), ["layer.*"])


def test_adamw_step_matches_reference_formula() -> None:
    torch.manual_seed(0)
    model = _tiny()
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = OptimConfig(lr=0.01, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    optimizer = build_optimizer(model.named_parameters(), cfg)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    w = reference["layers.0.mlp.up_proj.weight"]
    # First AdamW step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) plus decoupled decay.
    expected = w * (1 - 0.01 * 0.1) - 0.01 * 1.0 / (1.0 + 1e-8)
    assert torch.allclose(model.layers["0"].mlp.up_proj.weight, expected, atol=1e-7)
    b = reference["layers.0.mlp.up_proj.bias"]
    assert torch.allclose(model.layers["0"].mlp.up_proj.bias, b - 0.01 / (1.0 + 1e-8), atol=1e-7)


def test_dynamic_loss_scaler() -> None:
    scaler = DynamicLossScaler(scale=8.0, growth_interval=2)
    assert scaler.update(float("inf")) is True and scaler.scale == 4.0
    assert scaler.update(float("nan")) is True and scaler.scale == 2.0
    assert scaler.update(1.0) is False and scaler.scale == 2.0
    assert scaler.update(1.0) is False and scaler.scale == 4.0  # grew after 2 good steps
    restored = DynamicLossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored == scaler
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 8.0)
    restored.unscale_([param])
    assert param.grad.tolist() == [2.0, 2.0, 2.0]
