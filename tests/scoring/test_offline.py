"""Offline scorers: the real alt-profanity-check model and a tiny local transformers classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.scoring.registry import build_scorer

TEXTS = ["you are a stupid idiot", "a calm sunny day at the lake", "hell", "thank you so much", "ok"]


def test_profanity_scorer(profanity) -> None:
    scores = profanity.score(TEXTS)
    assert all(s is not None and set(s) == {"toxicity", "profanity"} for s in scores)
    assert scores[0]["toxicity"] > 0.9 and scores[1]["toxicity"] < 0.2  # type: ignore[index]
    assert profanity.version.startswith("alt-profanity-check-")


def test_default_scorer_without_key_is_calibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    assert build_scorer().name == "calibrated"
    with pytest.raises(UserError, match="unknown scorer"):
        build_scorer("nope")
    with pytest.raises(UserError, match="--hf-model"):
        build_scorer("hf-classifier")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-toxic-bert")
    words = sorted({w for text in TEXTS for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "toxic", 1: "Threat", 2: "insult"},
        label2id={"toxic": 0, "Threat": 1, "insult": 2},
        problem_type="multi_label_classification",
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hf_classifier_batching_matches_one_by_one(tiny_classifier: Path) -> None:
    scorer = build_scorer(
        "hf-classifier", hf_model=tiny_classifier, hf_batch_size=4, hf_label_map={"toxic": "toxicity"}
    )
    assert scorer.attributes == ("toxicity", "threat", "insult")
    batched = scorer.score(TEXTS)
    single = [scorer.score([text])[0] for text in TEXTS]
    for a, b in zip(batched, single):
        assert a is not None and b is not None and set(a) == {"toxicity", "threat", "insult"}
        for name in a:
            assert a[name] == pytest.approx(b[name], abs=1e-5)
            assert 0.0 <= a[name] <= 1.0
    assert len({round(s["toxicity"], 6) for s in batched}) > 1  # type: ignore[index]
    assert scorer.version.startswith(tiny_classifier.name + "-")
    long = scorer.score(["word " * 400_000])[0]  # truncated to the model's positions, not an error
    assert long is not None


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        build_scorer("hf-classifier", hf_model=tmp_path)
