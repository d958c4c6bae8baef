"""Sampling: padded vocabulary, greedy, top-k/top-p against a plain sort-based reference."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_detox.generate.sampling import (
    SamplingParams,
    draw_uniforms,
    sample_generator,
    sample_next,
)


def reference_sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """Textbook version, one row at a time: full sort, top-k, nucleus (ties at its edge
    kept), then inverse CDF of the kept tokens in token-id order."""
    out = []
    for row, x in zip(u.tolist(), logits):
        probs = torch.softmax(x.float() / params.temperature, dim=-1)
        values = probs.sort(descending=True).values
        if params.top_k:
            values = values[: params.top_k]
        before = values.double().cumsum(0) - values.double()
        keep = max(1, int((before < params.top_p).sum()))
        kept = torch.where(probs >= values[keep - 1], probs, 0.0).double()
        cdf = kept.cumsum(0)
        out.append(min(int((cdf <= row * cdf[-1]).sum()), len(probs) - 1))
    return torch.tensor(out)


def test_padded_vocab_is_never_chosen() -> None:
    logits = torch.zeros(4, 128)
    logits[:, 100:] = 50.0  # padding columns hold by far the largest logits
    assert (sample_next(logits, SamplingParams(greedy=True), 100, None) < 100).all()
    u = torch.tensor([0.0, 0.5, 0.999, 0.25], dtype=torch.float64)
    assert (sample_next(logits, SamplingParams(top_p=1.0), 100, u) < 100).all()
    assert (sample_next(logits, SamplingParams(top_k=5), 100, u) < 100).all()


def test_greedy_is_argmax() -> None:
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, SamplingParams(greedy=True), 300, None), logits.argmax(-1))


@pytest.mark.parametrize("params", [
    SamplingParams(top_p=0.9), SamplingParams(top_p=0.5, temperature=0.7), SamplingParams(top_k=7),
    SamplingParams(top_k=40, top_p=0.8), SamplingParams(top_p=1.0), SamplingParams(top_p=0.95, temperature=3.0),
])
def test_matches_sort_reference(params: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(1)
    # Peaked rows (a nucleus of a few tokens), flat rows (thousands: the threshold
    # widens several times) and a row of ties, in one batch.
    peaked = torch.randn(6, 5000, generator=gen) * 4.0
    flat = torch.randn(6, 5000, generator=gen) * 0.2
    tied = torch.zeros(1, 5000)  # every token ties with the last one kept: all are in
    spike = torch.zeros(1, 5000)  # token 0 holds half the mass, the rest lie far below it:
    spike[0, 0] = math.log(4999.0)  # the candidate threshold must widen to reach top_p
    logits = torch.cat([peaked, flat, tied, spike])
    u = torch.rand(14, generator=gen, dtype=torch.float64)
    got = sample_next(logits, params, 5000, u)
    assert torch.equal(got, reference_sample(logits, params, u))


def test_nucleus_excludes_the_tail() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = torch.linspace(0, 0.999, 200, dtype=torch.float64)
    picks = sample_next(logits.expand(200, -1), SamplingParams(top_p=0.9), 4, u)
    assert set(picks.tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.9 so token 2 is in; token 3 never


def test_per_sample_generators_are_reproducible_and_distinct() -> None:
    a = draw_uniforms([sample_generator(3, i) for i in range(4)])
    b = draw_uniforms([sample_generator(3, i) for i in (2, 3)])
    assert torch.equal(a[2:], b)
    assert len(set(a.tolist())) == 4
    assert not torch.equal(a, draw_uniforms([sample_generator(4, i) for i in range(4)]))


def test_invalid_params_are_rejected() -> None:
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=0.0)
