"""``eval ... --out``: one writer per folder, refused before any model is loaded."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from megatron_detox.cli import main
from megatron_detox.runlock import LOCK_NAME, _process_start, this_process


@pytest.mark.parametrize("command", [["perplexity", "--data", "docs.jsonl"],
                                     ["toxicity", "--prompts", "prompts.jsonl", "--scorer", "profanity"]])
def test_a_folder_in_use_is_refused_before_loading_the_model(tmp_path: Path, command: list[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import megatron_detox.models.loading as loading

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    out = tmp_path / "eval"
    out.mkdir()
    holder = replace(this_process("megatron-detox eval toxicity --out eval"), pid=1, pid_start=_process_start(1))
    (out / LOCK_NAME).write_text(json.dumps(asdict(holder)), encoding="utf-8")  # pid 1: alive, on this host
    code = main(["eval", *command, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{out}: in use by pid 1 on {holder.host}" in err
