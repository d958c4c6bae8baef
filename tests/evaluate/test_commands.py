"""End to end through the CLI: ``eval toxicity`` with the embedded SmolLM2 and the offline
scorer on real RealToxicityPrompts prompts, then ``report``; and the bad-input paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import check_png, html_images

from megatron_detox.cli import main


def _rtp_subset(shared_data: Path, out: Path, per_file: int) -> Path:
    lines = []
    for name in ("toxic", "nontoxic"):
        with (shared_data / "rtp/decodingtrust" / f"{name}.jsonl").open(encoding="utf-8") as handle:
            lines += [next(handle) for _ in range(per_file)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def _run_toxicity(prompts: Path, out: Path, samples: int, tokens: int) -> int:
    return main(["eval", "toxicity", "--prompts", str(prompts), "--samples", str(samples), "--max-new-tokens",
                 str(tokens), "--scorer", "profanity", "--bootstrap", "200", "--out", str(out), "--no-progress",
                 "--batch-size", "8"])


@pytest.fixture(scope="module")
def toxicity_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, smollm2_gguf: Path) -> Path:
    pytest.importorskip("profanity_check")
    folder = tmp_path_factory.mktemp("e2e")
    prompts = _rtp_subset(shared_data, folder / "prompts.jsonl", per_file=2)
    assert _run_toxicity(prompts, folder / "run", samples=2, tokens=6) == 0
    return folder


def test_eval_toxicity_end_to_end(toxicity_run: Path) -> None:
    run = toxicity_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["scorer"] == "profanity"
    assert metrics["all"]["num_prompts"] == 4
    assert metrics["toxic"]["num_prompts"] + metrics["nontoxic"]["num_prompts"] == 4
    assert metrics["num_samples"] == 8 and metrics["num_unscored"] == 0
    scored = [json.loads(line) for line in (run / "scored.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_index"], r["sample_index"]) for r in scored) == [(p, s) for p in range(4) for s in range(2)]
    # EMT recomputed by hand from the scored records.
    maxima = [max(r["scores"]["toxicity"] for r in scored if r["prompt_index"] == p) for p in range(4)]
    assert metrics["all"]["expected_max_toxicity"] == pytest.approx(sum(maxima) / 4)
    assert metrics["all"]["toxicity_probability"] == pytest.approx(sum(m >= 0.5 for m in maxima) / 4)
    low, high = metrics["all"]["expected_max_toxicity_ci"]
    assert low <= metrics["all"]["expected_max_toxicity"] <= high


def test_rerun_resumes_and_from_scored_agrees(toxicity_run: Path) -> None:
    run = toxicity_run / "run"
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    assert _run_toxicity(toxicity_run / "prompts.jsonl", run, samples=2, tokens=6) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["scoring"]["num_from_cache"] == 8 and after["scoring"]["num_texts_sent"] == 0
    for key in ("all", "toxic", "nontoxic", "num_unscored"):
        assert after[key] == before[key]
    assert main(["eval", "toxicity", "--from-scored", str(run / "scored.jsonl"), "--prompts",
                 str(toxicity_run / "prompts.jsonl"), "--bootstrap", "200", "--out", str(toxicity_run / "alone")]) == 0
    alone = json.loads((toxicity_run / "alone/metrics.json").read_text())
    for key in ("all", "toxic", "nontoxic", "num_unscored", "scorer"):
        assert alone[key] == before[key]


def test_other_settings_in_the_same_folder_are_refused(toxicity_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run_toxicity(toxicity_run / "prompts.jsonl", toxicity_run / "run", samples=3, tokens=6) == 2
    assert "samples=2, not 3" in capsys.readouterr().err


def test_report_on_the_run(toxicity_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(toxicity_run / "run"), str(toxicity_run / "alone"),
                 "--out", str(toxicity_run / "report")]) == 0
    html = (toxicity_run / "report/report.html").read_text()
    images = html_images(html)
    assert len(images) == 3  # distribution, EMT, TP
    for image in images:
        check_png(image)
    for png in (toxicity_run / "report/figures").iterdir():
        check_png(png.read_bytes())
    assert (toxicity_run / "report/runs/run.json").is_file()


@pytest.mark.parametrize(("lines", "message"), [
    ([], "no prompts (the file is empty)"),
    (['{"prompt": {"toxicity": 0.3}}'], "prompts.jsonl:1: field 'prompt.text' is missing"),
])
def test_bad_prompt_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               lines: list[str], message: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    scored = tmp_path / "scored.jsonl"
    scored.write_text("", encoding="utf-8")
    code = main(["eval", "toxicity", "--prompts", str(prompts), "--from-scored", str(scored), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_prompts_without_toxicity_say_there_is_no_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": {"text": "a"}}\n{"prompt": {"text": "b"}}\n', encoding="utf-8")
    scored = tmp_path / "scored.jsonl"
    scored.write_text('{"prompt_index": 0, "scores": {"toxicity": 0.7}}\n'
                      '{"prompt_index": 1, "scores": {"toxicity": 0.1}}\n', encoding="utf-8")
    assert main(["eval", "toxicity", "--prompts", str(prompts), "--from-scored", str(scored),
                 "--out", str(tmp_path / "out")]) == 0
    assert "no toxic/non-toxic split" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["toxic"] is None and metrics["all"]["toxicity_probability"] == 0.5


def test_eval_perplexity_on_wikitext(tmp_path: Path, shared_data: Path, smollm2_gguf: Path) -> None:
    from megatron_detox.tokenizers import load_tokenizer

    text = (shared_data / "lm_text/wikitext2_tok_valid.txt").read_text(encoding="utf-8")[:600]
    data = tmp_path / "wiki.txt"
    data.write_text(text, encoding="utf-8")
    assert main(["eval", "perplexity", "--data", str(data), "--max-length", "64", "--stride", "32",
                 "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run/perplexity.json").read_text())["wiki.txt"]
    assert result["num_tokens"] == len(load_tokenizer(smollm2_gguf).encode(text))
    # A trained 135M model on Wikipedia text: far below uniform (49152), far above 1.
    assert 3.0 < result["perplexity"] < 200.0


@pytest.mark.slow
def test_eval_lm_eval_command_on_a_local_task(tmp_path: Path, smollm2_gguf: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from test_lm_eval_adapter import _write_tasks

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_tasks(tasks)
    assert main(["eval", "lm-eval", "--tasks", "detox_mc,detox_rolling", "--include-path", str(tasks),
                 "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run/lm_eval.json").read_text())["results"]
    assert 0.0 <= results["detox_mc"]["acc,none"] <= 1.0
    assert results["detox_rolling"]["word_perplexity,none"] > 1.0


def test_model_name_keys_peft_and_tokenizer(tmp_path: Path) -> None:
    import argparse

    from megatron_detox.commands.evaluate import _sampling_settings, model_name

    base = argparse.Namespace(model="smollm2-135m", checkpoint=None, peft=None, tokenizer=None, samples=25,
                              max_new_tokens=20, top_p=0.9, temperature=1.0, seed=1234)
    adapter = argparse.Namespace(**{**vars(base), "peft": str(tmp_path / "adapters")})
    tokenizer = argparse.Namespace(**{**vars(base), "tokenizer": "gpt2"})
    names = {model_name(base), model_name(adapter), model_name(tokenizer)}
    assert len(names) == 3 and model_name(base) == "smollm2-135m"
    # The resumable toxicity run folder refuses a PEFT run on top of a base run's files.
    assert _sampling_settings(base) != _sampling_settings(adapter)


def test_eval_bold_checks_domains_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "bold", "--bold-dir", str(tmp_path), "--domains", "zodiac", "--out", str(tmp_path / "o"),
                 "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "BOLD domain 'zodiac' is unknown" in err and err.count("\n") == 1
    code = main(["eval", "bold", "--bold-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "missing: not found" in err and err.count("\n") == 1


def test_missing_inputs_are_refused_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # "no-such-model" would fail to load: these errors must come first.
    code = main(["eval", "perplexity", "--data", str(tmp_path / "missing.txt"), "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.txt: not found" in err and err.count("\n") == 1
    code = main(["eval", "lm-eval", "--tasks", "x", "--include-path", str(tmp_path / "nope"), "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "--include-path must be a folder" in err and err.count("\n") == 1


def test_eval_toxicity_cpu_workers_take_effect(tmp_path: Path, shared_data: Path, smollm2_gguf: Path) -> None:
    import torch

    from megatron_detox.evaluate.toxicity_eval import GENERATION_DIR

    pytest.importorskip("profanity_check")
    prompts = _rtp_subset(shared_data, tmp_path / "prompts.jsonl", per_file=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for workers in ("1", "2"):
            out = tmp_path / workers
            assert main(["eval", "toxicity", "--prompts", str(prompts), "--samples", "2", "--max-new-tokens", "4",
                         "--scorer", "profanity", "--bootstrap", "10", "--out", str(out), "--no-progress",
                         "--cpu-workers", workers]) == 0
            manifest = json.loads((out / GENERATION_DIR / "manifest.json").read_text())
            assert manifest["dp_size"] == int(workers)
    finally:
        torch.set_num_threads(before)
