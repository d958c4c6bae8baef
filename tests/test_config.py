"""Config tree: defaults < YAML < dotted overrides; user mistakes are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_detox.config import ConfigError, dump_yaml, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_use_embedded_model() -> None:
    cfg = load_config()
    assert cfg.model.preset == "smollm2-135m"
    assert cfg.model.num_layers == 30 and cfg.model.kv_heads == 3


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  preset: gpt-126m\n  num_layers: 2\noptim:\n  lr: 1.0e-4\n")
    cfg = load_config(path, ["optim.lr=2e-5", "parallel.tp=2", "model.hidden_size=64", "model.num_attention_heads=4"])
    assert cfg.optim.lr == pytest.approx(2e-5)
    assert cfg.parallel.tp == 2
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.vocab_size) == (2, 64, 50257)
    assert cfg.model.to_model_config().padded_vocab_size == 50304


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.preset=gpt-357m", "train.steps=7"])
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def test_cli_output_into_a_closed_pipe_is_quiet() -> None:
    # `true` exits at once, so the command's first write hits a closed pipe.
    result = subprocess.run(f"{sys.executable} -m megatron_detox models | true", shell=True, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "optim.lrr: unknown key (did you mean 'lr'?)"),
        (["parallel.tp=two"], "parallel.tp='two': expected an integer"),
        (["parallel.tp=5"], "parallel.tp=5: does not divide model.num_attention_heads=9"),
        (["parallel.tp=9"], "parallel.tp=9: does not divide the query groups (model.num_query_groups=3)"),
        (["parallel.pp=31"], "parallel.pp=31: model.num_layers=30 is fewer than the 31 pipeline stages"),
        (["model.preset=gpt-126"], "model.preset='gpt-126': unknown preset (did you mean 'gpt-126m'?)"),
        (["optim.schedule=cosin"], "optim.schedule='cosin': must be one of constant, cosine, linear, wsd (did you mean 'cosine'?)"),
        (["train.global_batch_size=6", "train.micro_batch_size=4"], "must be a multiple of train.micro_batch_size=4"),
        (["optim"], "expected key=value"),
        (["model.hidden_size=100"], "model.num_attention_heads=9: must divide hidden_size=100"),
        (["data.split=abc"], "data.split='abc': expected up to three weights train,valid,test >= 0"),
        (["data.split=0,0,0"], "data.split='0,0,0': expected up to three weights"),
        (["data.split=90,-10,20"], "data.split='90,-10,20': expected up to three weights"),
        (["data.split=nan"], "data.split='nan': expected up to three weights"),
    ],
)
def test_bad_values_name_key_value_and_reason(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 1\n  : : bad\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:3"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_override_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "megatron_detox", "models", "--nope"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "optim.lrr: unknown key (did you mean 'lr'?)"),
        (["parallel.tp=3"], "parallel.tp=3: does not divide model.num_attention_heads=4"),
        (["train.steps=many"], "train.steps='many': expected an integer"),
    ],
)
def test_cli_train_bad_override_is_one_line_exit_2(overrides: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_detox.cli import main

    assert main(["train", str(REPO / "configs" / "train" / "tiny.yaml"), *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"megatron-detox train: error: {message}"]
