"""End-to-end training: kill anywhere and resume, TP2 → TP1 resume, fp16/bf16, fine-tuning."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from distributed import run_distributed
from tiny_corpus import tiny_gpt_config

from megatron_detox.config import load_config
from megatron_detox.errors import UserError
from megatron_detox.models import Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.models.state_dict import expected_shapes
from megatron_detox.train import train
from megatron_detox.train.checkpoint import load_checkpoint_weights, load_plain_model_state
from megatron_detox.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _config(tmp: Path, corpus: tuple[Path, str, int], name: str, **sections: dict) -> Path:
    text_file, spec, vocab = corpus
    return tiny_gpt_config(tmp / f"{name}.yaml", run_dir=tmp / name, text_file=text_file, tokenizer=spec,
                           vocab_size=vocab, **sections)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "megatron_detox", "train", str(config), "--no-progress"]


def test_kill_anywhere_then_rerun_gives_the_same_losses(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    train_cfg = {"steps": 10, "save_interval": 1, "keep_last": 2}
    reference = _config(tmp_path, corpus, "reference", train=train_cfg)
    killed = _config(tmp_path, corpus, "killed", train=train_cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # The uninterrupted run goes alongside the one to be killed (two cores, half the wall time).
    uninterrupted = subprocess.Popen(_command(reference), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
    kill_after = random.Random().randint(2, 8)  # reported in the failure messages
    proc = subprocess.Popen(_command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if len(read_metrics(metrics)) >= kill_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before_kill = len(read_metrics(metrics))
    assert steps_before_kill < 10, "the run finished before it could be killed"

    subprocess.run(_command(killed), check=True, cwd=REPO, env=env, capture_output=True)
    _, stderr = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, stderr.decode()[-2000:]
    want, got = _losses(tmp_path / "reference"), _losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 11)), f"killed after {steps_before_kill} steps"
    assert got == want, f"killed after {steps_before_kill} steps"
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, 11))  # each step exactly once
    assert not list((tmp_path / "killed" / "checkpoints").glob("*.tmp*"))
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip() == "step_000010"


def _train_tp2(rank: int, world_size: int, config: str) -> dict[int, float]:
    result = train(load_config(config, ["parallel.tp=2"]), progress=False)
    return result.losses


def test_save_on_tp2_resume_on_tp1(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config = _config(tmp_path, corpus, "tp2", train={"steps": 6, "save_interval": 3, "keep_last": 2})
    tp2_losses = run_distributed(_train_tp2, 2, str(config))[0]
    assert sorted(tp2_losses) == list(range(1, 7))

    # The TP1 run starts from the TP2 checkpoint of step 3.
    resumed = tmp_path / "tp1"
    shutil.copytree(tmp_path / "tp2", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000006")
    (resumed / "checkpoints" / "latest").write_text("step_000003\n")
    result = train(load_config(config, [f"train.run_dir={resumed}"]), progress=False)
    assert sorted(result.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert result.losses[step] == pytest.approx(tp2_losses[step], abs=1e-5)


def _train_layouts(rank: int, world_size: int, runs: list[tuple[str, str]]) -> list[dict[int, float]]:
    # One spawn for every layout: process start-up dominates on a small CPU box.
    return [train(load_config(config, [layout]), progress=False).losses for config, layout in runs]


@pytest.mark.distributed
def test_save_on_pp2_or_fsdp2_resume_on_tp1(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    """Optimizer state too: pipeline stages (tied head copy) and FSDP shards reshard to one process."""
    layouts = {"pp2": "parallel.pp=2", "fsdp2": "parallel.dp_shard=2"}
    configs = {name: _config(tmp_path, corpus, name, train={"steps": 5, "save_interval": 3, "keep_last": 2})
               for name in layouts}
    losses = run_distributed(_train_layouts, 2, [(str(configs[n]), layout) for n, layout in layouts.items()])[0]
    for (name, _), saved_losses in zip(layouts.items(), losses, strict=True):
        assert sorted(saved_losses) == [1, 2, 3, 4, 5], name
        resumed = tmp_path / f"{name}-tp1"
        shutil.copytree(tmp_path / name, resumed)
        shutil.rmtree(resumed / "checkpoints" / "step_000005")
        (resumed / "checkpoints" / "latest").write_text("step_000003\n")
        result = train(load_config(configs[name], [f"train.run_dir={resumed}"]), progress=False)
        assert sorted(result.losses) == [4, 5], name
        for step in (4, 5):
            assert result.losses[step] == pytest.approx(saved_losses[step], abs=1e-5), (name, step)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains(tmp_path: Path, corpus: tuple[Path, str, int], precision: str) -> None:
    config = _config(tmp_path, corpus, precision, train={"steps": 6, "precision": precision, "save_interval": 0})
    result = train(load_config(config), progress=False)
    records = read_metrics(tmp_path / precision / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert result.losses[6] < result.losses[1]
    if precision == "fp16":
        assert all(r["loss_scale"] >= 1.0 for r in records)


def test_checkpoint_of_another_shape_is_refused(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config = _config(tmp_path, corpus, "shape", train={"steps": 2})
    train(load_config(config), progress=False)
    with pytest.raises(UserError, match=r"meta.json: checkpoint has model hidden_size=64 but the config gives 128"):
        train(load_config(config, ["model.hidden_size=128", "train.steps=4"]), progress=False)
    # The refused start leaves the run's resolved config as it was.
    assert load_config(tmp_path / "shape" / "config.yaml").model.hidden_size == 64


def test_fine_tune_from_checkpoint_and_freeze(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    base = _config(tmp_path, corpus, "base", train={"steps": 4})
    train(load_config(base), progress=False)
    tuned = load_config(base, [f"train.run_dir={tmp_path / 'tuned'}", f"model.pretrained={tmp_path / 'base'}",
                               "train.steps=2", "train.freeze=[tok_embeddings.*,pos_embeddings.*]"])
    result = train(tuned, progress=False)
    base_losses = _losses(tmp_path / "base")
    # Starting from the trained weights, the first loss is far below a random model's (~ln 384 = 5.95).
    assert result.losses[1] < base_losses[1] - 0.2
    records = read_metrics(tmp_path / "tuned" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert json.loads((tmp_path / "tuned" / "checkpoints" / "step_000002" / "meta.json").read_text())["step"] == 2


def test_fp16_overflow_skips_steps_and_halves_the_scale(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config = _config(tmp_path, corpus, "overflow",
                     train={"steps": 3, "precision": "fp16", "initial_loss_scale": 1e30, "save_interval": 0})
    result = train(load_config(config), progress=False)
    records = read_metrics(tmp_path / "overflow" / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [True, True, True]
    assert [r["loss_scale"] for r in records] == [5e29, 2.5e29, 1.25e29]
    # Skipped steps leave the weights at their seeded initial values.
    cfg = load_config(config)
    model_cfg = cfg.model.to_model_config()
    initial = Transformer(model_cfg)
    init_weights(initial, model_cfg, cfg.train.seed)
    names = sorted(expected_shapes(model_cfg))
    saved = load_plain_model_state(result.checkpoint, model_cfg, names)
    for name, tensor in initial.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_sigterm_checkpoints_and_stops(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config = _config(tmp_path, corpus, "preempted", train={"steps": 40, "save_interval": 0})
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    sent = threading.Event()

    def preempt() -> None:  # what SLURM does before it kills a job
        while len(read_metrics(metrics)) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    result = train(load_config(config), progress=False)
    assert sent.is_set() and result.stopped_by_signal
    assert 2 <= result.step < 40
    assert result.checkpoint == tmp_path / "preempted" / "checkpoints" / f"step_{result.step:06d}"
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, result.step + 1))
    resumed = train(load_config(config, ["train.steps=" + str(result.step + 2)]), progress=False)
    assert sorted(resumed.losses) == [result.step + 1, result.step + 2]


def test_adapter_method_trains_only_the_adapters(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    config = _config(tmp_path, corpus, "adapter", train={"steps": 2, "method": "adapter", "save_interval": 0},
                     peft={"adapter": {"bottleneck": 8, "init_std": 0.02}})
    result = train(load_config(config), progress=False)
    cfg = load_config(config)
    model_cfg = cfg.model.to_model_config()
    initial = Transformer(model_cfg)
    init_weights(initial, model_cfg, cfg.train.seed)
    _, saved = load_checkpoint_weights(result.checkpoint)
    base = initial.state_dict()
    adapters = sorted(set(saved) - set(base))
    assert adapters and all("adapter" in name for name in adapters)
    for name, tensor in base.items():
        assert torch.equal(saved[name], tensor), name  # the base model is frozen

    # Inference sees the trained adapters both ways: the run's checkpoint (PEFT modules
    # rebuilt from meta.json) and base weights + the small run_dir/peft folder.
    from megatron_detox.inference import load_for_inference
    from megatron_detox.peft import load_peft_checkpoint

    loaded = load_for_inference(checkpoint=result.run_dir, tokenizer=corpus[1])
    load_peft_checkpoint(initial, model_cfg, result.run_dir / "peft")
    tokens = torch.randint(0, corpus[2], (2, 16))
    with torch.no_grad():
        expected = initial.eval()(tokens)
        assert torch.equal(loaded.model(tokens), expected)
        plain = Transformer(model_cfg)
        init_weights(plain, model_cfg, cfg.train.seed)
        assert not torch.allclose(plain.eval()(tokens), expected)  # the adapters are really applied


def test_pretokenized_paths_need_no_tokenizer_and_missing_ones_are_named(
        tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    from megatron_detox.data import preprocess
    from megatron_detox.tokenizers import load_tokenizer

    preprocess(corpus[0], tmp_path / "wiki", load_tokenizer(corpus[1]), progress=False)
    config = _config(tmp_path, corpus, "paths", train={"steps": 2})
    paths = [f"data.paths=[{tmp_path / 'wiki'}]", "data.text_files=[]", "data.tokenizer=null"]
    result = train(load_config(config, paths), progress=False)
    assert sorted(result.losses) == [1, 2]
    with pytest.raises(UserError, match=r"^data.paths\[0\]=.*missing.bin and .*missing.idx not found"):
        train(load_config(config, [f"data.paths=[{tmp_path / 'missing'}]", "data.text_files=[]",
                                   f"train.run_dir={tmp_path / 'other'}"]), progress=False)


def test_evaluation_every_n_steps_reports_the_validation_loss(tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    from megatron_detox.data import sample_batch
    from megatron_detox.train.setup import build_datasets, resolve_tokenizer

    config = _config(tmp_path, corpus, "eval", train={"steps": 4, "eval_interval": 2, "eval_steps": 2,
                                                      "save_interval": 2, "keep_last": 0})
    train(load_config(config), progress=False)
    records = {r["step"]: r for r in read_metrics(tmp_path / "eval" / "metrics.jsonl")}
    assert [s for s, r in sorted(records.items()) if "valid_loss" in r] == [2, 4]
    # Recompute: the plain model of each step's checkpoint on the first eval_steps validation batches.
    cfg = load_config(config)
    model_cfg = cfg.model.to_model_config()
    _, valid_ds = build_datasets(cfg, resolve_tokenizer(cfg, model_cfg), tmp_path / "eval" / "data_cache",
                                 is_main=True)
    names = sorted(expected_shapes(model_cfg))
    for step in (2, 4):
        model = Transformer(model_cfg).eval()
        ckpt = tmp_path / "eval" / "checkpoints" / f"step_{step:06d}"
        model.load_state_dict(load_plain_model_state(ckpt, model_cfg, names))
        losses = []
        with torch.no_grad():
            for i in range(2):
                batch = sample_batch(valid_ds, i * cfg.train.global_batch_size, cfg.train.global_batch_size)
                logits = model(batch["tokens"])[..., :corpus[2]]
                losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                                batch["labels"].flatten()).item())
        want = sum(losses) / len(losses)
        assert records[step]["valid_loss"] == pytest.approx(want, abs=1e-5)
        assert records[step]["valid_ppl"] == pytest.approx(math.exp(want), rel=1e-6)


def test_gradient_accumulation_gives_the_losses_of_one_big_batch(tmp_path: Path,
                                                                 corpus: tuple[Path, str, int]) -> None:
    losses = {}
    for micro in (4, 2, 1):  # global batch 4: 1, 2 or 4 micro-batches per optimizer step
        config = _config(tmp_path, corpus, f"micro{micro}",
                         train={"steps": 4, "micro_batch_size": micro, "save_interval": 0})
        losses[micro] = train(load_config(config), progress=False).losses
    # Adam hardly sees a gradient scale error, the gradient norm does: compare both.
    norms = {micro: [r["grad_norm"] for r in read_metrics(tmp_path / f"micro{micro}" / "metrics.jsonl")]
             for micro in losses}
    for micro in (2, 1):
        assert sorted(losses[micro]) == [1, 2, 3, 4]
        for step, loss in losses[4].items():
            assert losses[micro][step] == pytest.approx(loss, abs=1e-5), (micro, step)
        assert norms[micro] == pytest.approx(norms[4], rel=1e-4), micro


def test_resume_with_a_larger_global_batch_continues_at_the_consumed_samples(
        tmp_path: Path, corpus: tuple[Path, str, int]) -> None:
    from megatron_detox.data import sample_batch
    from megatron_detox.train.setup import build_datasets, resolve_tokenizer

    config = _config(tmp_path, corpus, "ramp", train={"steps": 2, "global_batch_size": 4, "save_interval": 0})
    first = train(load_config(config), progress=False)
    # Megatron-style batch ramp-up: 2 steps x 4 samples done, now 8 per step.
    cfg = load_config(config, ["train.steps=3", "train.global_batch_size=8"])
    resumed = train(cfg, progress=False)
    assert sorted(resumed.losses) == [3]
    meta = json.loads((resumed.checkpoint / "meta.json").read_text())
    assert meta["data"]["consumed_samples"] == 2 * 4 + 8
    # Step 3's loss is the step-2 model's loss on samples [8, 16), not [16, 24) (= step x new batch).
    model_cfg = cfg.model.to_model_config()
    train_ds, _ = build_datasets(cfg, resolve_tokenizer(cfg, model_cfg), tmp_path / "ramp" / "data_cache",
                                 is_main=True)
    model = Transformer(model_cfg).eval()
    model.load_state_dict(load_plain_model_state(first.checkpoint, model_cfg, sorted(expected_shapes(model_cfg))))

    def loss_on(start: int) -> float:
        batch = sample_batch(train_ds, start, 8)
        with torch.no_grad():
            logits = model(batch["tokens"])[..., :corpus[2]]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item()

    assert resumed.losses[3] == pytest.approx(loss_on(8), abs=1e-5)
    assert resumed.losses[3] != pytest.approx(loss_on(16), abs=1e-5)
