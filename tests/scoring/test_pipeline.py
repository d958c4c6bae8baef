"""score_records / score_file with the real offline model: order, exactly-once, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_detox import cli
from megatron_detox.errors import UserError
from megatron_detox.scoring.cache import ScoreCache
from megatron_detox.scoring.pipeline import ScoreSummary, score_file, score_records

from .conftest import read_jsonl, write_jsonl

TEXTS = ["you are a stupid idiot", "a calm sunny day", "go to hell", "a calm sunny day", "", "thank you"]


def test_order_dedup_and_resume_from_cache(tmp_path: Path, profanity) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "c": {"text": t}} for i, t in enumerate(TEXTS)])
    cache_path = tmp_path / "cache.sqlite"
    with ScoreCache(cache_path) as cache:
        first = score_file(source, tmp_path / "out.jsonl", profanity, cache, "c.text", progress=False)
    assert (first.num_records, first.num_scored, first.num_errors, first.num_texts_sent) == (6, 5, 1, 4)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == list(range(6))
    assert out[1]["scores"] == out[3]["scores"]
    assert out[4]["score_error"].startswith("empty text") and "scores" not in out[4]
    assert all(r["scorer"] == {"name": "profanity", "version": profanity.version} for r in out)
    assert out[0]["scores"]["toxicity"] > 0.5 > out[1]["scores"]["toxicity"]
    assert not (tmp_path / "out.jsonl.tmp").exists()

    with ScoreCache(cache_path) as cache:  # a rerun sends nothing
        again = score_file(source, tmp_path / "out2.jsonl", profanity, cache, "c.text", progress=False)
    assert again.num_texts_sent == 0 and again.num_from_cache == 5
    assert read_jsonl(tmp_path / "out2.jsonl") == out


def test_score_records_streams_in_order(profanity) -> None:
    records = [{"text": f"sample number {i}", "old": 1, "score_error": "stale"} for i in range(700)]
    summary = ScoreSummary()
    out = list(score_records(records, profanity, None, workers=2, summary=summary))
    assert [r["text"] for r in out] == [r["text"] for r in records]
    assert all("score_error" not in r and "toxicity" in r["scores"] for r in out)
    assert summary.num_scored == 700


def test_lone_surrogate_and_two_megabyte_text(tmp_path: Path, profanity) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "bad \\ud800 surrogate"}\n{"text": "' + "word " * 400_000 + '"}\n')
    score_file(source, tmp_path / "out.jsonl", profanity, None, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert out[0]["text"] == "bad \ud800 surrogate" and "scores" in out[0]
    assert "scores" in out[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok"}\n{"text": "ok2"}\n{"text": oops}\n', "in.jsonl:3: malformed JSON"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "in.jsonl:2: not valid UTF-8"),
        (b'{"text": "ok"}\n{"body": "x"}\n', "in.jsonl:2: field 'text' is missing"),
        (b'{"text": 3}\n', "in.jsonl:1: field 'text' is int"),
        (b"[1, 2]\n", "in.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, profanity, content: bytes, message: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    with pytest.raises(UserError, match=message):
        score_file(source, tmp_path / "out.jsonl", profanity, None, progress=False)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.tmp").exists()


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "fine"}\n{"text": \n')
    code = cli.main(
        [
            "score",
            "--scorer",
            "profanity",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("megatron-detox score: error: ") and "in.jsonl:2: malformed JSON" in err[0]


def test_cli_refuses_key_on_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["score", "--api-key", "AIza-SECRET-ON-ARGV", "--input", "x", "--output", "y"])
    err = capsys.readouterr().err
    assert code == 2 and "AIza-SECRET-ON-ARGV" not in err and "PERSPECTIVE_API_KEY" in err


def test_cli_perspective_without_key_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    code = cli.main(["score", "--scorer", "perspective", "--input", "x", "--output", "y"])
    assert code == 2 and "PERSPECTIVE_API_KEY" in capsys.readouterr().err


def test_rtp_continuations(shared_data: Path, tmp_path: Path, profanity) -> None:
    source = shared_data / "rtp" / "decodingtrust" / "toxic.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} missing")
    subset = tmp_path / "rtp.jsonl"
    subset.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:200]))
    score_file(subset, tmp_path / "out.jsonl", profanity, None, "continuation.text", progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 200 and all("scores" in r or "score_error" in r for r in out)
    assert [r["filename"] for r in out] == [r["filename"] for r in read_jsonl(subset)]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--timeout", "-1"], "--timeout must be > 0"),
        (["--backoff-base", "-1"], "--backoff-base and --backoff-max must be >= 0"),
        (["--backoff-max", "-2"], "--backoff-base and --backoff-max must be >= 0"),
    ],
)
def test_cli_bad_client_options_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    url = "http://127.0.0.1:9/v1alpha1/comments:analyze"  # loopback: no key needed
    code = cli.main(
        ["score", "--scorer", "perspective", "--perspective-url", url, *option, "--input", str(source),
         "--output", str(tmp_path / "out.jsonl"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
