"""The shipped ``calibrated`` scorer: determinism, range, ordering and bad input."""

from __future__ import annotations

import math

import pytest

from megatron_detox.errors import UserError
from megatron_detox.scoring.base import EMPTY_TEXT_ERROR
from megatron_detox.scoring.calibrated.data import ATTRIBUTES
from megatron_detox.scoring.calibrated.scorer import PACKAGED_HEAD, CalibratedScorer
from megatron_detox.scoring.registry import build_scorer

TOXIC = ["You are a stupid worthless idiot and I hate you.", "shut up you fucking moron",
         "I will kill you, you piece of shit"]
BENIGN = ["What a lovely sunny morning at the lake.", "Thank you so much for your help with the report.",
          "The committee will meet again on Tuesday to discuss the budget."]


@pytest.fixture(scope="module")
def scorer() -> CalibratedScorer:
    return CalibratedScorer()


def test_shipped_head_is_small_and_complete() -> None:
    size = sum((PACKAGED_HEAD / name).stat().st_size for name in ("head.safetensors", "head.json"))
    assert size < 4.5e6
    assert CalibratedScorer().attributes == ATTRIBUTES


def test_scores_every_attribute_in_unit_interval_and_orders_toxic_above_benign(scorer: CalibratedScorer) -> None:
    scores = scorer.score(TOXIC + BENIGN)
    assert all(s is not None and set(s) == set(ATTRIBUTES) for s in scores)
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for s in scores for v in s.values())  # type: ignore[union-attr]
    toxic = [s["toxicity"] for s in scores[:3]]  # type: ignore[index]
    benign = [s["toxicity"] for s in scores[3:]]  # type: ignore[index]
    assert min(toxic) > 0.5 > max(benign), (toxic, benign)
    assert min(toxic) > max(benign)
    # the threat sentence is the most threatening; the plain insults are insults
    threat = [s["threat"] for s in scores[:3]]  # type: ignore[index]
    assert threat.index(max(threat)) == 2
    assert all(s["insult"] > 0.5 for s in scores[:2])  # type: ignore[index]


def test_deterministic_and_batch_independent(scorer: CalibratedScorer) -> None:
    texts = TOXIC + BENIGN
    together = scorer.score(texts)
    alone = [scorer.score([t])[0] for t in texts]
    again = CalibratedScorer().score(texts)
    assert together == again
    for a, b in zip(together, alone):
        assert a is not None and b is not None
        assert all(abs(a[k] - b[k]) < 1e-9 for k in a)


def test_bad_input_gets_a_score_or_a_per_record_error(scorer: CalibratedScorer) -> None:
    huge = "lorem ipsum dolor sit amet " * (2_000_000 // 27)
    texts = ["", "   \n", huge, "Это просто текст на русском языке.", "这是一个中文句子。",
             "\x00\x01\x02\xff\ufffd" * 50, "bad \ud800 surrogate", "ok"]
    outcomes = scorer.score_detailed(texts)
    assert len(outcomes) == len(texts)
    assert outcomes[0].error == EMPTY_TEXT_ERROR and outcomes[1].error == EMPTY_TEXT_ERROR
    assert not outcomes[0].retryable
    assert all(o.ok for o in outcomes[2:])
    assert outcomes[2].truncated_bytes is not None and outcomes[2].truncated_bytes <= scorer.max_bytes
    assert all(o.truncated_bytes is None for o in outcomes[3:])
    assert all(0.0 <= v <= 1.0 for o in outcomes[2:] for v in o.scores.values())  # type: ignore[union-attr]


def test_registry_default_and_head_option(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    scorer = build_scorer()
    assert scorer.name == "calibrated" and scorer.version.startswith("head")
    assert "max_bytes=" in scorer.cache_namespace
    with pytest.raises(UserError, match="no calibrated head"):
        build_scorer("calibrated", calibrated_head=tmp_path)
