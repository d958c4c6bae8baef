"""BOLD: group perplexities (hand-computed and on the real files), continuation toxicity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from megatron_detox.errors import UserError
from megatron_detox.evaluate.bold import bold_perplexity, bold_toxicity, load_bold_domain, run_bold


class Unigram:
    def __init__(self, probs: list[float]) -> None:
        self.logits = torch.log(torch.tensor(probs))

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.logits.expand(*tokens.shape, -1).clone()


def _encode(text: str) -> list[int]:
    return [{"a": 0, "b": 1}[c] for c in text]


def _bold_dir(root: Path) -> Path:
    (root / "wikipedia").mkdir(parents=True)
    (root / "prompts").mkdir()
    wiki = {"group_x": {"e1": ["aa", "a"], "e2": ["ab"]}, "group_y": {"e3": ["bb", "  "]}}
    (root / "wikipedia/gender_wiki.json").write_text(json.dumps(wiki))
    prompts = {"group_x": {"e1": ["Ann is", "Bo was"]}, "group_y": {"e3": ["Cy is"]}}
    (root / "prompts/gender_prompt.json").write_text(json.dumps(prompts))
    return root


def test_group_perplexity_hand_computed(tmp_path: Path) -> None:
    groups = load_bold_domain(_bold_dir(tmp_path), "gender")
    assert groups == {"group_x": ["aa", "a", "ab"], "group_y": ["bb"]}  # blank sentence dropped
    # p(a) = 0.8, p(b) = 0.2, prefix token a (not counted as a target)
    result = bold_perplexity(Unigram([0.8, 0.2]), _encode, groups, max_length=8, prefix_token=0)
    x, y = result["groups"]["group_x"], result["groups"]["group_y"]
    assert x["num_tokens"] == 5 and y["num_tokens"] == 2
    assert x["perplexity"] == pytest.approx(math.exp(-(4 * math.log(0.8) + math.log(0.2)) / 5))
    assert y["perplexity"] == pytest.approx(5.0)
    spread = result["spread"]
    assert spread["highest"] == "group_y" and spread["lowest"] == "group_x"
    assert spread["max_minus_min"] == pytest.approx(5.0 - x["perplexity"])
    assert spread["max_over_min"] == pytest.approx(5.0 / x["perplexity"])


def test_continuation_toxicity_hand_computed() -> None:
    result = bold_toxicity({"g1": [0.1, 0.5, None], "g2": [0.9, 0.7], "g3": [None]})
    assert result["groups"]["g1"] == {"mean_toxicity": pytest.approx(0.3), "toxic_fraction": 0.5,
                                      "num_continuations": 3, "num_unscored": 1}
    assert result["groups"]["g2"]["toxic_fraction"] == 1.0
    assert result["groups"]["g3"]["mean_toxicity"] is None
    assert result["spread"]["max_minus_min"] == pytest.approx(0.5)
    assert (result["spread"]["highest"], result["spread"]["lowest"]) == ("g2", "g1")


def test_real_bold_gender(shared_data: Path, tiny_smollm2_vocab_model: torch.nn.Module, smollm2_tokenizer: Any) -> None:
    groups = load_bold_domain(shared_data / "bold", "gender")
    assert sorted(groups) == ["American_actors", "American_actresses"]
    assert sum(len(v) for v in groups.values()) == 3204
    result = bold_perplexity(tiny_smollm2_vocab_model, smollm2_tokenizer.encode, groups, max_length=128,
                             prefix_token=smollm2_tokenizer.bos, vocab_size=49152, max_per_group=3, seed=0)
    for group, block in result["groups"].items():
        assert block["num_sentences"] == 3 and block["num_available"] == len(groups[group])
        assert block["num_tokens"] > 3 and 1.0 < block["perplexity"] < 1e7
    again = bold_perplexity(tiny_smollm2_vocab_model, smollm2_tokenizer.encode, groups, max_length=128,
                            prefix_token=smollm2_tokenizer.bos, vocab_size=49152, max_per_group=3, seed=0)
    assert again == result  # the seeded subsample is reproducible


def test_run_bold_with_continuation_toxicity_resumes(tmp_path: Path, tiny_smollm2_vocab_model: torch.nn.Module,
                                                     smollm2_tokenizer: Any) -> None:
    pytest.importorskip("profanity_check")
    from megatron_detox.evaluate.generation import build_generate_fn
    from megatron_detox.scoring import build_scorer

    model, tokenizer = tiny_smollm2_vocab_model, smollm2_tokenizer
    loads: list[int] = []

    def load() -> tuple[Any, Any, Any]:
        loads.append(1)
        return model, tokenizer, model.config

    root = tmp_path / "bold"
    (root / "wikipedia").mkdir(parents=True)
    (root / "prompts").mkdir()
    wiki = {"A": {"x": ["Alice is a doctor.", "Ann plays chess."]}, "B": {"y": ["Bob is a nurse."]}}
    prompts = {"A": {"x": ["Alice is a", "Ann plays"]}, "B": {"y": ["Bob is a"]}}
    (root / "wikipedia/gender_wiki.json").write_text(json.dumps(wiki))
    (root / "prompts/gender_prompt.json").write_text(json.dumps(prompts))
    generate = build_generate_fn(load, model_name="tiny", samples=1, max_new_tokens=3, top_p=0.9, temperature=1.0,
                                 seed=0, batch_size=4, progress=False)
    with build_scorer("profanity") as scorer:
        kwargs = dict(domains=["gender"], max_length=64, prefix_token=tokenizer.bos, vocab_size=49152,
                      generate=generate, scorer=scorer, progress=False)
        summary = run_bold(model, tokenizer.encode, root, tmp_path / "out", **kwargs)
        toxicity = summary["domains"]["gender"]["toxicity"]
        assert {g: v["num_continuations"] for g, v in toxicity["groups"].items()} == {"A": 2, "B": 1}
        assert all(v["num_unscored"] == 0 for v in toxicity["groups"].values())
        assert loads == [1]
        (tmp_path / "out/bold.json").unlink()
        again = run_bold(model, tokenizer.encode, root, tmp_path / "out", **kwargs)
    assert again == summary and loads == [1]
    assert json.loads((tmp_path / "out/bold.json").read_text()) == json.loads(json.dumps(summary))


def test_bad_bold_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown"):
        load_bold_domain(tmp_path, "zodiac")
    with pytest.raises(UserError, match="gender_wiki.json: not found"):
        load_bold_domain(tmp_path, "gender")
    (tmp_path / "wikipedia").mkdir()
    (tmp_path / "wikipedia/gender_wiki.json").write_text('{"g": ["not a mapping"]}')
    with pytest.raises(UserError, match="group 'g' must map entity names"):
        load_bold_domain(tmp_path, "gender")


def test_rerun_with_another_model_is_recomputed_not_reused(tmp_path: Path) -> None:
    root = _bold_dir(tmp_path / "bold")
    kwargs: dict[str, Any] = dict(domains=["gender"], max_length=8, prefix_token=0, progress=False)
    first = run_bold(Unigram([0.8, 0.2]), _encode, root, tmp_path / "out", run_settings={"model": "a"}, **kwargs)
    # Same settings: the finished domain is reused (even if the callable differs).
    again = run_bold(Unigram([0.5, 0.5]), _encode, root, tmp_path / "out", run_settings={"model": "a"}, **kwargs)
    assert again == first
    # Another model into the same folder: recomputed, not the first model's numbers.
    other = run_bold(Unigram([0.5, 0.5]), _encode, root, tmp_path / "out", run_settings={"model": "b"}, **kwargs)
    assert other["domains"]["gender"]["perplexity"]["groups"]["group_y"]["perplexity"] == pytest.approx(2.0)
    assert first["domains"]["gender"]["perplexity"]["groups"]["group_y"]["perplexity"] == pytest.approx(5.0)
    assert other["domains"]["gender"]["settings"]["model"] == "b"
