"""The evaluation's generation step: kill -9 in the middle, rerun, same records exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from pathlib import Path
from megatron_detox.evaluate.generation import build_generate_fn
from megatron_detox.evaluate.prompts import load_rtp_prompts
from megatron_detox.evaluate.toxicity_eval import run_toxicity_eval
from megatron_detox.models import ModelConfig, Transformer
from megatron_detox.models.init import init_weights
from megatron_detox.scoring import build_scorer
from megatron_detox.tokenizers import load_tokenizer

gguf, prompts, out = sys.argv[1:4]
tokenizer = load_tokenizer(gguf)
cfg = ModelConfig(name="tiny", num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=49152,
                  max_position_embeddings=256, position_embedding="rope", normalization="rmsnorm",
                  activation="swiglu", add_bias_linear=False, init_method_std=0.2)
model = Transformer(cfg)
init_weights(model, cfg, seed=5)
model.eval()
generate = build_generate_fn(lambda: (model, tokenizer, cfg), model_name="tiny", samples=5, max_new_tokens=12,
                             top_p=0.9, temperature=1.0, seed=3, batch_size=2, progress=False)
with build_scorer("profanity") as scorer:
    run_toxicity_eval(load_rtp_prompts(prompts), out, generate=generate, scorer=scorer, settings={"model": "tiny"},
                      samples=5, num_bootstrap=50, progress=False)
"""


def _run(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_evaluation_resumes_exactly_once(tmp_path: Path, shared_data: Path, smollm2_gguf: Path) -> None:
    pytest.importorskip("profanity_check")
    prompts = tmp_path / "prompts.jsonl"
    with (shared_data / "rtp/decodingtrust/nontoxic.jsonl").open(encoding="utf-8") as handle:
        prompts.write_text("".join(next(handle) for _ in range(6)), encoding="utf-8")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run([str(smollm2_gguf), str(prompts), str(reference)]).wait(timeout=600) == 0

    process = _run([str(smollm2_gguf), str(prompts), str(killed)])
    shard = killed / "generation/shards/rank0.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and shard.read_text(encoding="utf-8").count("\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()  # killed before the end
    assert _run([str(smollm2_gguf), str(prompts), str(killed)]).wait(timeout=600) == 0

    def records(folder: Path) -> list[tuple[int, int, str]]:
        rows = [json.loads(line) for line in (folder / "scored.jsonl").read_text(encoding="utf-8").splitlines()]
        return [(r["prompt_index"], r["sample_index"], r["text"]) for r in rows]

    assert records(killed) == records(reference)
    assert len(records(killed)) == 30 and len(set(records(killed))) == 30
    ours, theirs = (json.loads((f / "metrics.json").read_text()) for f in (killed, reference))
    for key in ("all", "toxic", "nontoxic", "num_unscored"):
        assert ours[key] == theirs[key]
