"""Generation throughput: our engine vs ``transformers`` ``generate``, same weights, same run.

Two shapes (``--shape``):

- ``short`` (the default): SmolLM2-135M (the embedded GGUF, dequantized to fp32), batch 32, 16-token prompts,
64 new tokens, top-p 0.9 / temperature 1.0 (no top-k), EOS disabled so both produce
exactly batch x 64 tokens, same thread count.
- ``sgeat``: SGEAT self-generation. ``--samples`` (default 2 x batch) unconditional
  samples from BOS, up to ``--new-tokens`` (default 512), EOS enabled (SmolLM2's
  ``<|im_end|>`` and ``<|endoftext|>``), top-p 0.9. Ours streams them through a
  continuous batch of ``--batch-size`` rows; ``transformers`` runs batches of that size,
  each until its longest sample ends. Both report *useful* tokens/s: tokens of finished
  samples, EOS excluded.

At more than one thread ours decodes as ``megatron-detox generate`` does by default: in one
forked one-thread process per thread (``generate.cpu_workers``), the batch shared out
among them (``--cpu-workers 1``: one process on every thread, the ablation). The
reference is one process at the same thread count.

Runs alternate (ours, HF, ours, HF, ...)
and the best time of each is kept, so noise from a shared machine hurts both alike;
process CPU time is reported next to wall time for the same reason.

Prompts are the first 16 tokens of RealToxicityPrompts prompts from the shared data
(``--prompts text``, the default) or uniformly random token ids (``--prompts random``:
the model is then very unsure, nuclei hold thousands of tokens, the slow sampling path).

Also prints the memory-bandwidth roofline fraction of our decode steps: bytes a step
must read (all weights + the KV cache written so far) divided by the step time, over
the copy bandwidth measured here; for the SGEAT shape the fractions of the memory and
the compute (measured fp32 matmul rate) roofline of our useful tokens/s. The last line
is ``ratio=<ours / transformers>``.

    OMP_NUM_THREADS=1 python benchmarks/generate_throughput.py [--threads 1] [--repeats 3]
    OMP_NUM_THREADS=2 python benchmarks/generate_throughput.py --shape sgeat --threads 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from megatron_detox.generate.cpu_linears import CpuDecodeLinears, decode_backend
from megatron_detox.generate.cpu_workers import SharedQueue, resolve_cpu_workers, run_in_workers
from megatron_detox.generate.engine import GenerationCache, decode_one_token, generate_batch, generate_stream
from megatron_detox.generate.projection import VocabProjection
from megatron_detox.generate.sampling import SamplingParams
from megatron_detox.generate.stage import decode_linears, use_cpu_decode_linears
from megatron_detox.models.loading import load_model
from megatron_detox.plan.hardware import measure_cpu_device

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def shared_out(workers: int, model: torch.nn.Module, step: Callable[..., torch.Tensor],
               share: Callable[[int], T]) -> list[T]:
    """``share(w)`` for every worker: in this process (its decode linears entered once per run,
    outside the timings) or, as the generation stage does, in forked one-thread processes
    that each set up their own (inside the timings)."""
    if workers == 1:
        return [share(0)]

    def in_worker(w: int) -> T:
        with decode_linears(model, step):
            return share(w)

    return run_in_workers(workers, in_worker)


def decode_path(workers: int, enabled: bool) -> str:
    """The decode linears' path ours takes: this process's, or that of workers at one thread."""
    if workers == 1:
        return (decode_backend() or "torch") if enabled else "torch"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return decode_backend() or "torch"
    finally:
        torch.set_num_threads(threads)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) worker processes."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def build_hf(model: torch.nn.Module, cfg) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_detox.models.hf_keys import to_hf_state_dict

    hf_cfg, hf_state = to_hf_state_dict(cfg, model.state_dict())
    hf_cfg = {k: v for k, v in hf_cfg.items() if k not in ("model_type", "architectures")}
    hf = LlamaForCausalLM(LlamaConfig(**hf_cfg)).eval()
    hf.load_state_dict(hf_state, strict=False)  # lm_head is tied to embed_tokens
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # every row generates exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return hf


def text_prompts(data: Path, batch_size: int, length: int) -> torch.Tensor:
    """The first ``length`` tokens of the first RealToxicityPrompts prompts that are long enough."""
    from megatron_detox.models.embedded import ensure_embedded_gguf
    from megatron_detox.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(ensure_embedded_gguf())
    rows: list[list[int]] = []
    for name in ("nontoxic.jsonl", "toxic.jsonl"):
        with (data / "rtp" / "decodingtrust" / name).open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                ids = tokenizer.encode(record["prompt"]["text"] + record["continuation"]["text"])
                if len(ids) >= length:
                    rows.append(ids[:length])
                if len(rows) == batch_size:
                    return torch.tensor(rows)
    raise SystemExit(f"{data}: fewer than {batch_size} prompts of {length} tokens")


def copy_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (each copied byte is read once and written once)."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("short", "sgeat"), default="short")
    parser.add_argument("--samples", type=int, help="sgeat shape: samples per side (default 2 x batch size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, help="default 64 (short), 512 (sgeat)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile our decode step")
    parser.add_argument("--prompts", choices=("text", "random"), default="text")
    parser.add_argument("--cpu-workers", type=int, default=0,
                        help="ours in N one-thread processes (0: one per thread, as generate; 1: one process)")
    parser.add_argument("--torch-gemm", action="store_true",
                        help="keep torch's GEMMs for our decode steps (no CpuDecodeLinears): the ablation")
    parser.add_argument("--data", default=os.environ.get("MEGATRON_DETOX_DATA", str(REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape == "sgeat":
        return sgeat_shape(args)
    args.new_tokens = args.new_tokens or 64

    model, cfg = load_model("smollm2-135m")
    hf = build_hf(model, cfg)
    if args.prompts == "random":
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(3, cfg.vocab_size, (args.batch_size, args.prompt_len), generator=gen)
    else:
        prompts = text_prompts(Path(args.data), args.batch_size, args.prompt_len)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    step = torch.compile(decode_one_token, dynamic=True) if args.compile else decode_one_token
    projection = VocabProjection(model.output)  # as the generation stage: packed once per run
    setup = time.perf_counter()
    workers = resolve_cpu_workers(args.cpu_workers, torch.device("cpu"), single_process=True,
                                  eager=step is decode_one_token and not args.torch_gemm, num_items=args.batch_size)
    fast = not args.torch_gemm and use_cpu_decode_linears(model, step)
    # As the stage: once per run, in this process or in each worker (shared_out).
    linears = CpuDecodeLinears(model, exclude=(model.output,)).__enter__() if fast and workers == 1 else None
    print(f"cpu_decode_linears={fast or workers > 1} cpu_workers={workers} "
          f"(setup {time.perf_counter() - setup:.2f} s, once per run) decode_path={decode_path(workers, fast)}")

    def share(w: int) -> int:
        ids = list(range(w, args.batch_size, workers))
        out = generate_batch(model, prompts[ids].tolist(), ids, params, max_new_tokens=args.new_tokens,
                             vocab_size=cfg.vocab_size, head_dim=cfg.head_dim, seed=1, decode_step=step,
                             projection=projection)
        return sum(len(g.tokens) for g in out)

    def ours() -> int:
        return sum(shared_out(workers, model, step, share))

    def theirs() -> int:
        with torch.inference_mode():
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_p=0.9,
                              top_k=0, temperature=1.0, max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens)
        return int(out[:, args.prompt_len:].numel())

    ours()  # warm-up (and compilation) outside the timings
    theirs()
    best = {"ours": float("inf"), "transformers": float("inf")}
    best_cpu = dict(best)
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("transformers", theirs)):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            tokens[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
            best_cpu[name] = min(best_cpu[name], cpu_seconds() - start_cpu)
    rate = {name: tokens[name] / best[name] for name in best}
    for name in best:
        print(f"{name}: {tokens[name]} tokens in {best[name]:.2f} s wall ({best_cpu[name]:.2f} s CPU) = "
              f"{rate[name]:.1f} tokens/s")
    print(f"cpu_time_ratio={best_cpu['transformers'] / best_cpu['ours']:.3f} prompts={args.prompts}")

    # Roofline: a decode step reads every weight once plus the KV written so far.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once
    kv_per_slot = GenerationCache.num_bytes(cfg.num_layers, args.batch_size, 1, cfg.kv_heads, cfg.head_dim)
    mean_len = args.prompt_len + args.new_tokens / 2
    step_bytes = weight_bytes + kv_per_slot * mean_len
    step_time = best["ours"] / args.new_tokens  # prefill included: an upper bound on step time
    step_bytes *= workers  # each worker reads every weight and its rows' cache per step
    bandwidth = copy_bandwidth()
    fraction = step_bytes / step_time / bandwidth
    print(f"threads={args.threads} weights={weight_bytes / 2**20:.0f} MiB kv/step={kv_per_slot * mean_len / 2**20:.1f} MiB "
          f"step={step_time * 1e3:.1f} ms copy_bandwidth={bandwidth / 1e9:.1f} GB/s roofline_fraction={fraction:.3f}")
    if linears is not None:
        linears.__exit__(None, None, None)
    print(f"ratio={rate['ours'] / rate['transformers']:.3f}")


def sgeat_shape(args: argparse.Namespace) -> None:
    """Unconditional samples until EOS or ``--new-tokens``: useful tokens/s, ours vs transformers."""
    from megatron_detox.models.embedded import ensure_embedded_gguf
    from megatron_detox.tokenizers import load_tokenizer

    new_tokens = args.new_tokens or 512
    samples = args.samples or 2 * args.batch_size
    model, cfg = load_model("smollm2-135m")
    tokenizer = load_tokenizer(ensure_embedded_gguf())
    hf = build_hf(model, cfg)
    bos = tokenizer.bos if tokenizer.bos is not None else tokenizer.eod
    stops = sorted({tokenizer.eod} | ({cfg.eos_token_id} if cfg.eos_token_id is not None else set()))
    params = SamplingParams(temperature=1.0, top_p=0.9)
    projection = VocabProjection(model.output)
    workers = resolve_cpu_workers(args.cpu_workers, torch.device("cpu"), single_process=True, eager=True,
                                  num_items=samples)
    rows = -(-args.batch_size // workers)  # the stage's share of the batch per worker
    fast = use_cpu_decode_linears(model, decode_one_token)
    linears = CpuDecodeLinears(model, exclude=(model.output,)).__enter__() if fast and workers == 1 else None
    print(f"shape=sgeat samples={samples} batch={args.batch_size} max_new_tokens={new_tokens} stops={stops} "
          f"cpu_decode_linears={fast or workers > 1} cpu_workers={workers} rows_per_worker={rows} "
          f"decode_path={decode_path(workers, fast)}")

    lengths: list[int] = []  # useful tokens of each of our samples (last run)

    def ours(seed: int) -> tuple[int, int]:
        work = [(i, [bos]) for i in range(samples)]
        queue = SharedQueue(work) if workers > 1 else None  # as the stage: rows take the next sample from one queue

        def share(w: int) -> list[tuple[int, str]]:
            done = generate_stream(model, work, params, batch_size=rows, max_new_tokens=new_tokens,
                                   vocab_size=cfg.vocab_size, head_dim=cfg.head_dim, stop_ids=stops, seed=seed,
                                   projection=projection, queue=queue)
            return [(len(g.tokens), g.finish_reason) for g in done]

        done = [g for part in shared_out(workers, model, decode_one_token, share) for g in part]
        lengths[:] = [n for n, _ in done]
        return sum(lengths), sum(reason == "eos" for _, reason in done)

    def theirs(seed: int) -> tuple[int, int]:
        torch.manual_seed(seed)
        useful = eos = 0
        for start in range(0, samples, args.batch_size):
            rows = min(args.batch_size, samples - start)
            prompts = torch.full((rows, 1), bos)
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_p=0.9,
                                  top_k=0, temperature=1.0, max_new_tokens=new_tokens, eos_token_id=stops,
                                  pad_token_id=stops[0])
            for row in out[:, 1:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                useful += len(row) if cut is None else cut
                eos += cut is not None
        return useful, eos

    best = {"ours": 0.0, "transformers": 0.0}
    for repeat in range(args.repeats):
        for name, fn in (("ours", ours), ("transformers", theirs)):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            useful, eos = fn(repeat)
            wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
            rate = useful / wall
            best[name] = max(best[name], rate)
            print(f"{name}: {useful} useful tokens ({eos}/{samples} samples ended at EOS) in {wall:.1f} s wall "
                  f"({cpu:.1f} s CPU) = {rate:.1f} useful tokens/s")
    print(sgeat_roofline(model, cfg, rows, lengths, best["ours"]))
    if linears is not None:
        linears.__exit__(None, None, None)
    print(f"ratio={best['ours'] / best['transformers']:.3f}")


def sgeat_roofline(model: torch.nn.Module, cfg, batch_size: int, lengths: list[int],  # type: ignore[no-untyped-def]
                   rate: float) -> str:
    """Our useful tokens/s as a fraction of the memory and of the compute roofline.

    A useful token of a full batch (``batch_size``: the rows of one process's step) needs
    1/batch of one read of every weight plus a read
    of its own sample's cached keys/values (the BOS and every token before it), and
    2 FLOPs per linear weight plus 4 per cached slot and attention channel. The roofs are
    this machine's measured copy bandwidth and fp32 matmul rate at the run's thread
    count; the binding one is the larger fraction.
    """
    device = measure_cpu_device(matmul_size=2048)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    mean_slots = sum(n * (n + 1) / 2 for n in lengths) / max(sum(lengths), 1)  # slots a token's step attends over
    kv_per_slot = GenerationCache.num_bytes(cfg.num_layers, 1, 1, cfg.kv_heads, cfg.head_dim)
    bytes_per_token = weight_bytes / batch_size + kv_per_slot * mean_slots
    flops_per_token = 2 * linear_weights + 4 * cfg.num_layers * cfg.num_attention_heads * cfg.head_dim * mean_slots
    memory = rate * bytes_per_token / (device.memory_bandwidth_gbs * 1e9)
    compute = rate * flops_per_token / (device.peak_tflops_32 * 1e12)
    return (f"threads={torch.get_num_threads()} mean_cached_slots={mean_slots:.0f} "
            f"copy_bandwidth={device.memory_bandwidth_gbs:.1f} GB/s matmul_peak={device.peak_tflops_32 * 1e3:.1f} GFLOP/s "
            f"memory_roofline_fraction={memory:.3f} compute_roofline_fraction={compute:.3f} "
            f"roofline_fraction={max(memory, compute):.3f}")


if __name__ == "__main__":
    main()
