"""The shipped configs load, the cluster recipes carry the paper's settings, and every launch
script's usage line names a config that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megatron_detox.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("name", ["gpt-1.3b", "gpt-8.3b", "gpt-530b"])
def test_cluster_recipes_use_the_papers_released_settings(name: str) -> None:
    for folder in ("sgeat", "train"):
        cfg = load_config(REPO / "configs" / folder / f"{name}.yaml")
        assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2) == (2e-5, 0.9, 0.95)
        assert (cfg.optim.weight_decay, cfg.optim.clip_grad) == (0.1, 1.0)
        assert cfg.train.global_batch_size == 512 and cfg.data.seq_length == 2048
        assert cfg.parallel.activation_checkpointing != "none"
        assert cfg.train.method == ("adapter" if name == "gpt-530b" else "full")
    sgeat = load_config(REPO / "configs" / "sgeat" / f"{name}.yaml")
    assert (sgeat.generate.num_samples, sgeat.generate.max_new_tokens) == (100000, 1000)
    assert (sgeat.generate.top_p, sgeat.generate.temperature) == (0.9, 1.0)
    assert (REPO / "launch" / "slurm" / f"sgeat-{name}.sbatch").is_file()


def test_launch_scripts_name_existing_configs() -> None:
    named = {m for script in (REPO / "launch").rglob("*") if script.is_file()
             for m in re.findall(r"configs/[\w./-]+\.yaml", script.read_text())}
    assert named and all((REPO / path).is_file() for path in named), sorted(named)


def test_readme_configs_read_no_shared_data() -> None:
    """A user's clone has no ../shared: nothing the README runs may read from it."""
    for path in [*(REPO / "configs" / "sgeat").glob("*.yaml"), REPO / "configs" / "train" / "tiny.yaml"]:
        cfg = load_config(path)
        for value in [*cfg.data.text_files, *cfg.data.paths, *cfg.eval.prompts, *cfg.eval.perplexity_files]:
            assert "shared" not in value and (REPO / value).is_file(), (path, value)
