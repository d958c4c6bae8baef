"""The lm-eval model class on local task definitions over local data (nothing from the hub)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"  # read before datasets is first imported
os.environ["HF_HUB_OFFLINE"] = "1"

from megatron_detox.evaluate.lm_eval_adapter import MODEL_NAME, MegatronDetoxLM  # noqa: E402
from megatron_detox.evaluate.perplexity import compute_perplexity  # noqa: E402

MC_DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "a potato", "blue"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["four", "seven"], "answer": 0},
    {"question": "Cats like to", "choices": ["sleep", "compile code", "fly", "sing"], "answer": 0},
]
ROLLING_DOCS = [
    {"text": "The quick brown fox jumps over the lazy dog. " * 6},
    {"text": "Perplexity is the exponential of the average negative log-likelihood per token."},
]


def _write_tasks(folder: Path) -> None:
    mc = folder / "mc.jsonl"
    mc.write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS), encoding="utf-8")
    rolling = folder / "rolling.jsonl"
    rolling.write_text("".join(json.dumps(d) + "\n" for d in ROLLING_DOCS), encoding="utf-8")
    (folder / "detox_mc.yaml").write_text(f"""task: detox_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
""", encoding="utf-8")
    (folder / "detox_rolling.yaml").write_text(f"""task: detox_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rolling}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""", encoding="utf-8")


def _direct_loglikelihood(model: torch.nn.Module, tokenizer: Any, context: str, continuation: str) -> float:
    """log p(continuation | context) straight from the model's logits."""
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    assert whole[:len(context_ids)] == context_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole]))[0, :, :49152].float(), dim=-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))


@pytest.fixture()
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_tasks(tasks)
    return tasks


def test_local_tasks_match_direct_computation(offline_datasets: Path, tiny_smollm2_vocab_model: torch.nn.Module,
                                              smollm2_tokenizer: Any) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny_smollm2_vocab_model, smollm2_tokenizer
    # max_length 16 forces several rolling windows on the long document.
    lm = MegatronDetoxLM(model, tokenizer, max_length=16, batch_size=4)
    results = simple_evaluate(model=lm, tasks=["detox_mc", "detox_rolling"],
                              task_manager=TaskManager(include_path=str(offline_datasets), include_defaults=False),
                              bootstrap_iters=0, log_samples=True, random_seed=0)
    assert results is not None
    mc_samples = results["samples"]["detox_mc"]
    assert len(mc_samples) == len(MC_DOCS)
    correct = 0
    for sample in mc_samples:
        doc = sample["doc"]
        got = [resp[0][0] for resp in sample["resps"]]
        # The exact strings lm-eval built (it adds the target delimiter " " before each choice).
        arguments = [tuple(arg) for arg in sample["arguments"]]
        assert [context for context, _ in arguments] == [doc["question"]] * len(doc["choices"])
        assert [continuation for _, continuation in arguments] == [" " + c for c in doc["choices"]]
        want = [_direct_loglikelihood(model, tokenizer, context, continuation) for context, continuation in arguments]
        assert got == pytest.approx(want, abs=1e-4)
        correct += int(max(range(len(want)), key=want.__getitem__) == doc["answer"])
    assert results["results"]["detox_mc"]["acc,none"] == pytest.approx(correct / len(MC_DOCS))

    rolling = results["samples"]["detox_rolling"]
    assert len(rolling) == len(ROLLING_DOCS)
    total_words = total_ll = 0.0
    for sample in rolling:
        [(text,)] = [tuple(arg) for arg in sample["arguments"]]
        assert text == sample["doc"]["text"]
        ll = sample["resps"][0][0]
        # Disjoint rolling windows == our perplexity with stride == window, prefixed by BOS.
        ours = compute_perplexity(model, [tokenizer.encode(text)], max_length=16, stride=16,
                                  prefix_token=lm.prefix_token_id, vocab_size=49152)
        assert ll == pytest.approx(-ours.nll_sum, rel=1e-5)
        total_ll += ll
        total_words += len(re.split(r"\s+", text))  # lm-eval's word count (trailing "" included)
    assert results["results"]["detox_rolling"]["word_perplexity,none"] == pytest.approx(
        math.exp(-total_ll / total_words), rel=1e-5)


def test_registered_and_generate_until(tiny_smollm2_vocab_model: torch.nn.Module, smollm2_tokenizer: Any) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    assert get_model(MODEL_NAME) is MegatronDetoxLM
    model, tokenizer = tiny_smollm2_vocab_model, smollm2_tokenizer
    lm = MegatronDetoxLM(model, tokenizer, max_length=32)
    request = Instance("generate_until", {}, ("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 5}), 0)
    [text] = lm.generate_until([request], disable_tqdm=True)
    # Greedy reference: argmax step by step with the model itself.
    tokens = tokenizer.encode("Once upon a time")
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(5):
            next_token = int(model(torch.tensor([tokens + expected]))[0, -1, :49152].argmax())
            if next_token == tokenizer.eod:
                break
            expected.append(next_token)
    assert text == tokenizer.decode(expected).split("\n\n")[0]
