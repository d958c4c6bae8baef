"""``--config`` on the single-stage commands: flag > YAML section > dataclass default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_detox.cli import main
from megatron_detox.commands.config_defaults import fill_from_config


def test_flag_beats_yaml_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("generate:\n  top_p: 0.5\n  seed: 7\neval:\n  samples: 3\n")
    mapping = {"top_p": "generate.top_p", "seed": "generate.seed", "temperature": "generate.temperature",
               "samples": "eval.samples"}
    args = argparse.Namespace(config=str(config), top_p=None, seed=11, temperature=None, samples=None)
    fill_from_config(args, mapping)
    assert (args.top_p, args.seed, args.temperature, args.samples) == (0.5, 11, 1.0, 3)
    args = argparse.Namespace(config=None, top_p=None, seed=None, temperature=None, samples=None)
    fill_from_config(args, mapping)
    assert (args.top_p, args.seed, args.samples) == (0.9, 1234, 25)


def test_score_command_takes_the_scorer_from_the_yaml(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "run.yaml"
    config.write_text("score:\n  scorer: profanity\n  workers: 2\n")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "what a lovely day"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", "--config", str(config), "--input", str(source), "--output", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["scorer"]["name"] == "profanity"
    config.write_text("score:\n  scorer: no-such-scorer\n")
    assert main(["score", "--config", str(config), "--input", str(source), "--output", str(out)]) == 2
    assert "unknown scorer 'no-such-scorer'" in capsys.readouterr().err
    config.write_text("score:\n  qpz: 3\n")
    assert main(["score", "--config", str(config), "--input", str(source), "--output", str(out)]) == 2
    assert "score.qpz: unknown key (did you mean 'qps'?)" in capsys.readouterr().err
