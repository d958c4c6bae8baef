"""User mistakes stop ``sgeat run`` with one line and exit code 2, at or before their stage,
keeping what earlier stages wrote; the corpus modes take their inputs from the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_detox.cli import main
from megatron_detox.jsonl import iter_jsonl
from megatron_detox.scoring.profanity import ProfanityScorer
from megatron_detox.scoring.server import ServerSettings, serve_in_thread
from tests.sgeat.conftest import CI_CONFIG, tiny_overrides


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("megatron-detox sgeat: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--from-stage", "trian"], "--from-stage trian: unknown stage (did you mean 'train'?)"),
    (["--until-stage", "eval"], "--until-stage eval: unknown stage"),
    (["sgeat.num_sampels=5"], "sgeat.num_sampels: unknown key"),
    (["score.qpz=2"], "score.qpz: unknown key (did you mean 'qps'?)"),
    (["sgeat.mode=prompted", "generate.prompts=/nonexistent/prompts.jsonl"],
     "generate.prompts='/nonexistent/prompts.jsonl': sgeat.mode=prompted needs an existing JSONL prompt file"),
    (["sgeat.mode=dapt", "sgeat.corpus=/nonexistent/corpus.jsonl"],
     "sgeat.corpus='/nonexistent/corpus.jsonl': sgeat.mode=dapt needs an existing JSONL corpus file"),
    (["eval.prompts=[/nonexistent/rtp.jsonl]"], "eval.prompts: /nonexistent/rtp.jsonl: file not found"),
    (["score.scorer=no-such-scorer"], "unknown scorer 'no-such-scorer'"),
    (["train.run_dir=elsewhere"], "train.run_dir='elsewhere': sgeat run trains in <sgeat.work_dir>/train"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_stage(tiny_pretrained: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], extra: list[str],
                                                           expected: str) -> None:
    work = tmp_path / "run"
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), *extra]) == 2
    assert expected in _one_error(capsys.readouterr().err)
    assert not (work / "generate").exists()


def test_rejected_perspective_key_stops_at_the_score_stage_keeping_the_corpus(
        tiny_pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve_in_thread(ProfanityScorer(), port=0, settings=ServerSettings(api_key="the-right-key"))
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "a-wrong-key")
    work = tmp_path / "run"
    try:
        code = main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress",
                     "score.scorer=perspective", f"score.perspective_url={server.url}", "score.qps=50"])
    finally:
        server.close()
    assert code == 2
    err = capsys.readouterr().err
    line = _one_error(err)
    assert "HTTP 400" in line and "API key not valid" in line and "a-wrong-key" not in err
    stages = json.loads((work / "manifest.json").read_text())["stages"]
    assert stages["generate"]["status"] == "done" and stages["score"]["status"] == "failed"
    assert "a-wrong-key" not in (work / "manifest.json").read_text()
    assert len(list(iter_jsonl(work / "generate" / "generations.jsonl"))) == 8  # the corpus is kept


def test_prompted_mode_samples_each_prompt_repeat_times(tiny_pretrained: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in ("The cat", "A fox", "Paris")))
    work = tmp_path / "run"
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress",
                 "sgeat.mode=prompted", f"generate.prompts={prompts}", "generate.repeat=2",
                 "--until-stage", "generate"]) == 0
    records = [r for _, r in iter_jsonl(work / "generate" / "generations.jsonl")]
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(p, s) for p in range(3) for s in range(2)]
    assert records[0]["prompt"] == "The cat"
    # generate.num_prompts: the first N prompts only (a changed setting regenerates)
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress",
                 "sgeat.mode=prompted", f"generate.prompts={prompts}", "generate.repeat=2",
                 "generate.num_prompts=2", "--until-stage", "generate"]) == 0
    records = [r for _, r in iter_jsonl(work / "generate" / "generations.jsonl")]
    assert [r["prompt"] for r in records] == ["The cat", "The cat", "A fox", "A fox"]


def test_prompted_mode_places_the_prompt_as_sgeat_prompt_tokens_says(tiny_pretrained: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in ("The cat", "A fox", "Paris")))
    work = tmp_path / "run"
    args = ["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress",
            "sgeat.mode=prompted", f"generate.prompts={prompts}", "generate.repeat=2", "--until-stage", "preprocess"]
    documents, mask = work / "preprocess" / "documents.jsonl", work / "preprocess" / "corpus.loss_mask.idx"
    counts = {}
    for placement in ("context", "train", "drop"):  # later runs reuse generate/score/filter and redo preprocess
        assert main([*args, f"sgeat.prompt_tokens={placement}"]) == 0
        kept = [r for _, r in iter_jsonl(work / "filter" / "kept.jsonl")]
        assert len(kept) == 3
        docs = [r for _, r in iter_jsonl(documents)]
        assert [d["ends"] for d in docs] == [r["finish_reason"] != "length" for r in kept]
        if placement == "context":
            assert [(d["context"], d["text"]) for d in docs] == [(r["prompt"], r["text"]) for r in kept]
        elif placement == "train":
            assert [(d["context"], d["text"]) for d in docs] == [("", r["prompt"] + r["text"]) for r in kept]
        else:
            assert [(d["context"], d["text"]) for d in docs] == [("", r["text"]) for r in kept]
        assert mask.is_file()
        stage = json.loads((work / "manifest.json").read_text())["stages"]["preprocess"]
        assert "preprocess/corpus.loss_mask.bin" in stage["outputs"]  # a changed mask reruns training
        counts[placement] = stage["counts"]
        assert counts[placement]["documents"] == 3
    # The prompt is in the document either way, but only "train" puts it in the loss.
    assert counts["context"]["tokens"] == counts["train"]["tokens"] > counts["drop"]["tokens"]
    assert counts["context"]["loss_tokens"] == counts["drop"]["loss_tokens"] < counts["train"]["loss_tokens"]


def test_dapt_mode_filters_the_given_corpus_without_generating(tiny_pretrained: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    texts = ["a calm day by the sea", "you stupid idiot", "the quick brown fox", "shut up you moron",
             "we planted trees", "the committee met today"]
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    work = tmp_path / "run"
    assert main(["sgeat", "run", str(CI_CONFIG), *tiny_overrides(tiny_pretrained, work), "--no-progress",
                 "sgeat.mode=dapt", f"sgeat.corpus={corpus}", "data.json_key=body",
                 "--until-stage", "preprocess"]) == 0
    kept = [r["body"] for _, r in iter_jsonl(work / "filter" / "kept.jsonl")]
    assert len(kept) == 3 and "you stupid idiot" not in kept and "shut up you moron" not in kept
    stages = json.loads((work / "manifest.json").read_text())["stages"]
    assert stages["generate"]["counts"] == {"records": 6} and not (work / "generate" / "generations.jsonl").exists()
    assert stages["preprocess"]["counts"]["documents"] == 3
