"""The engine on tiny random models: cache == recomputation, batch invariance, EOS, padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron_detox.generate import engine
from megatron_detox.generate.engine import GenerationCache, generate_batch, generate_stream
from megatron_detox.generate.projection import VOCAB_CHUNK_ROWS, VocabProjection
from megatron_detox.generate.sampling import SamplingParams
from megatron_detox.models import gpt

from .conftest import assert_eos_compaction_exact, ragged_prompts, run, tiny_config, tiny_model
from .test_prefix import prefixed

VOCAB = 100


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_cached_greedy_equals_recomputation(family: str) -> None:
    """Ragged batch + KV cache (rows at their own slots) gives the tokens of a cache-free loop."""
    changes = {} if family == "llama" else dict(position_embedding="learned", normalization="layernorm",
                                                activation="gelu", add_bias_linear=True, num_query_groups=None)
    model = tiny_model(tiny_config(VOCAB, **changes))
    prompts = _prompts(6)
    results = run(model, prompts, list(range(6)), SamplingParams(greedy=True), new=12)
    for prompt, result in zip(prompts, results):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                logits = model(torch.tensor([seq]))[0, -1, :VOCAB]  # full recomputation, no cache
                seq.append(int(logits.argmax()))
        assert result.tokens == seq[len(prompt):]
        assert result.finish_reason == "length"


def test_padded_vocab_never_generated() -> None:
    model = tiny_model(tiny_config(VOCAB))

    def boost_padding(module, inputs, logits):  # type: ignore[no-untyped-def]
        logits[..., VOCAB:] += 100.0  # the padding columns become by far the most likely
        return logits

    model.output.register_forward_hook(boost_padding)
    with torch.no_grad():
        assert int(model(torch.tensor([[1, 2, 3]]))[0, -1].argmax()) >= VOCAB
    for params in (SamplingParams(greedy=True), SamplingParams(top_p=0.9), SamplingParams(top_k=3)):
        for result in run(model, _prompts(4), list(range(4)), params):
            assert max(result.tokens) < VOCAB


def test_sampled_text_independent_of_batch_size_and_composition() -> None:
    model = tiny_model(tiny_config(VOCAB))
    prompts = _prompts(7, seed=3)
    params = SamplingParams(top_p=0.9, temperature=1.0)
    stops = (7,)
    full = run(model, prompts, list(range(7)), params, new=16, stops=stops)
    for batch_size in (1, 4):
        parts = []
        for start in range(0, 7, batch_size):
            parts += run(model, prompts[start:start + batch_size], list(range(start, min(start + batch_size, 7))),
                         params, new=16, stops=stops)
        assert [(g.tokens, g.finish_reason) for g in parts] == [(g.tokens, g.finish_reason) for g in full]
    shuffled = [6, 2, 0, 5, 1, 3, 4]  # composition and order do not matter either
    again = run(model, [prompts[i] for i in shuffled], shuffled, params, new=16, stops=stops)
    assert {g.sample_id: g.tokens for g in again} == {g.sample_id: g.tokens for g in full}
    # and the seed does matter
    other = run(model, prompts, list(range(7)), params, new=16, stops=stops, seed=6)
    assert [g.tokens for g in other] != [g.tokens for g in full]


def test_eos_stops_rows_and_compaction_keeps_the_rest_exact() -> None:
    assert_eos_compaction_exact(tiny_model(tiny_config(VOCAB)), _prompts(8, seed=1))


def _stream(model, work, params, batch_size, new=16, stops=(7,), seed=5):  # type: ignore[no-untyped-def]
    cfg = model.config
    return list(generate_stream(model, work, params, batch_size=batch_size, max_new_tokens=new,
                                vocab_size=cfg.vocab_size, head_dim=cfg.head_dim, stop_ids=stops, seed=seed))


@pytest.mark.parametrize("attention", ["masked", "by-row"])
@pytest.mark.parametrize("prefix", [False, True])
def test_continuous_batching_gives_each_id_the_text_of_a_plain_batch(
        prefix: bool, attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows finish at different steps (stop id, length) and the next prompt takes their
    slot: every id is generated once, with the text it gets in one batch of all prompts,
    whether rows of different lengths attend in one masked call or row by row."""
    monkeypatch.setattr(engine, "attention_by_row", lambda device: attention == "by-row")
    monkeypatch.setattr(engine, "BY_ROW_MIN_MEAN_GAP", 0)  # tiny rows: by row whenever lengths differ
    calls = []
    by_row = gpt.decode_attention_by_row
    monkeypatch.setattr(gpt, "decode_attention_by_row", lambda *args: calls.append(1) or by_row(*args))
    model = prefixed(tiny_config(VOCAB)).eval() if prefix else tiny_model(tiny_config(VOCAB))
    prompts = _prompts(13, seed=4)
    ids = list(range(100, 113))
    params = SamplingParams(top_p=0.9)
    plain = {g.sample_id: (g.tokens, g.finish_reason) for g in run(model, prompts, ids, params, new=16, stops=(7,))}
    reasons = {reason for _, reason in plain.values()}
    assert reasons == {"eos", "length"}, "the check needs rows that finish early and rows that run to the end"
    for batch_size in (1, 4, 7):
        streamed = _stream(model, list(zip(ids, prompts)), params, batch_size)
        assert sorted(g.sample_id for g in streamed) == ids  # none lost, none twice
        assert {g.sample_id: (g.tokens, g.finish_reason) for g in streamed} == plain
    assert bool(calls) == (attention == "by-row")


def test_continuous_batching_yields_samples_as_they_finish() -> None:
    model = tiny_model(tiny_config(VOCAB))
    prompts = _prompts(9, seed=2)
    streamed = _stream(model, list(enumerate(prompts)), SamplingParams(greedy=True), 3, new=12, stops=(5, 9, 11))
    lengths = [len(g.tokens) + (g.finish_reason == "eos") for g in streamed]
    assert sorted(g.sample_id for g in streamed) == list(range(9))
    # A short sample that entered later can finish before a long one that entered first.
    assert [g.sample_id for g in streamed] != list(range(9)) and min(lengths) < max(lengths)


def test_cache_reads_only_written_slots() -> None:
    cache = GenerationCache([0], 2, 10, 1, 4)
    cache.length = 3
    k = torch.ones(2, 3, 1, 4)
    keys, values = cache.update(0, torch.arange(3), k, k)
    assert keys.shape == (2, 1, 3, 4) and torch.equal(keys, k.transpose(1, 2))  # head-major
    cache.keep_rows(torch.tensor([1]))
    assert cache.keys[0].shape == (1, 1, 10, 4) and cache.batch_size == 1


def test_empty_prompt_is_rejected() -> None:
    model = tiny_model(tiny_config(VOCAB))
    with pytest.raises(ValueError):
        run(model, [[1, 2], []], [0, 1], SamplingParams(greedy=True))


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    from megatron_detox.errors import UserError
    from megatron_detox.models.embedded import ensure_embedded_gguf
    from megatron_detox.models.loading import load_model
    from megatron_detox.tokenizers import load_tokenizer

    try:
        model, cfg = load_model("smollm2-135m")
    except UserError as error:  # offline and not cached
        pytest.skip(str(error))
    return model, cfg, load_tokenizer(ensure_embedded_gguf())


def test_greedy_matches_transformers_on_smollm2(smollm2) -> None:  # type: ignore[no-untyped-def]
    """Same weights in ``LlamaForCausalLM``: HF greedy per prompt == our ragged batch, token for token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_detox.models.hf_keys import to_hf_state_dict

    model, cfg, tokenizer = smollm2
    hf_config, hf_state = to_hf_state_dict(cfg, model.state_dict())
    hf_config = {k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}
    hf = LlamaForCausalLM(LlamaConfig(**hf_config)).eval()
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()

    texts = ["The capital of France is", "Once upon a time, in a small village by the sea, there"]
    prompts = [tokenizer.encode(t) for t in texts]
    assert len(prompts[0]) != len(prompts[1])  # ragged: ours runs them left-padded in one batch
    ours = generate_batch(model, prompts, [0, 1], SamplingParams(greedy=True), max_new_tokens=10,
                          vocab_size=cfg.vocab_size, head_dim=cfg.head_dim)
    for prompt, result in zip(prompts, ours):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=10, eos_token_id=None, pad_token_id=0)
        assert result.tokens == out[0, len(prompt):].tolist()
    assert "Paris" in tokenizer.decode(ours[0].tokens)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    return ragged_prompts(n, VOCAB, seed, max_length=11)


@pytest.mark.parametrize("prepack", [True, False], ids=["onednn", "slices"])
def test_vocab_projection_equals_the_output_layer(prepack: bool) -> None:
    output = nn.Linear(16, 2 * VOCAB_CHUNK_ROWS + 300)  # two full slices and a partial one, with bias
    project = VocabProjection(output, prepack=prepack)
    with torch.no_grad():
        for rows in (3, 32, 1):  # the packed weight serves any batch size
            last = torch.randn(rows, 16)
            torch.testing.assert_close(project(last), output(last))
        output.weight.mul_(2.0)  # a changed weight is packed again, never served stale
        torch.testing.assert_close(project(last), output(last))
        output.weight = nn.Parameter(torch.randn_like(output.weight))  # so is a replaced one
        torch.testing.assert_close(project(last), output(last))
    last = torch.randn(2, 16)
    assert VocabProjection(None)(last) is last  # a model that returned logits itself
