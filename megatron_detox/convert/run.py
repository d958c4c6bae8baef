"""``convert``: open a source, open a sink, move the tensors group by group.

Peak memory is a few tensor groups (a Megatron sink holds one pipeline stage; see
docs/conversion.md). ``--dry-run`` prints
the mapping without reading a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_detox.convert.formats import DcpSink, DcpSource, GGUFSource, HFSink, HFSource
from megatron_detox.convert.groups import Sink, Source, tensor_groups
from megatron_detox.convert.megatron_read import MegatronSource
from megatron_detox.convert.megatron_write import MegatronSink
from megatron_detox.errors import UserError
from megatron_detox.models.state_dict import expected_shapes

SOURCES = ("megatron", "dcp", "hf", "gguf")
SINKS = ("megatron", "dcp", "hf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class ConvertOptions:
    source: str
    target: str
    input: Path
    output: Path
    tp: int = 1
    pp: int = 1
    dtype: str | None = None
    """bf16 | fp16 | fp32; None keeps the source's dtype."""
    vocab_size: int | None = None
    """The target tokenizer's vocabulary; a model with more tokens is refused."""
    max_shard_bytes: int = 5 * 2**30
    megatron_te: bool = False
    dry_run: bool = False
    progress: bool = True


def open_source(kind: str, path: Path, vocab_size: int | None = None) -> Source:
    if not path.exists():
        raise UserError(f"{path}: not found")
    if kind == "megatron":
        return MegatronSource(path, vocab_size)
    opener: dict[str, Callable[[Path], Source]] = {"dcp": DcpSource, "hf": HFSource, "gguf": GGUFSource}
    source = opener[kind](path)
    if vocab_size is not None:
        cfg = source.cfg
        if vocab_size < cfg.vocab_size:
            raise UserError(f"{path}: the model has {cfg.vocab_size} vocabulary rows, more than the target "
                            f"tokenizer's {vocab_size}; use the tokenizer the model was trained with")
        if vocab_size > cfg.padded_vocab_size:
            raise UserError(f"{path}: the target tokenizer has {vocab_size} tokens but the model only "
                            f"{cfg.padded_vocab_size} embedding rows")
        source.cfg = cfg.replace(vocab_size=vocab_size)
    return source


def open_sink(opts: ConvertOptions, source: Source, dtype: torch.dtype) -> Sink:
    cfg = source.cfg
    if opts.target == "megatron":
        return MegatronSink(opts.output, cfg, opts.tp, opts.pp, _DTYPE_NAMES.get(dtype, "fp32"), te=opts.megatron_te)
    if opts.target == "hf":
        return HFSink(opts.output, cfg, dtype, opts.max_shard_bytes)
    return DcpSink(opts.output, cfg, opts.tp, opts.pp)


def _check_output(opts: ConvertOptions) -> None:
    out, src = opts.output.resolve(), opts.input.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise UserError(f"{opts.output}: the output must not be the input or inside it (or contain it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{opts.output}: exists and is not an empty folder; give a new folder")
    if opts.tp < 1 or opts.pp < 1:
        raise UserError(f"--tp {opts.tp} --pp {opts.pp}: both must be >= 1")


def convert(opts: ConvertOptions, echo: Callable[[str], None] = print) -> Path | None:
    """Convert ``opts.input`` to ``opts.output``; with ``dry_run`` print the mapping and return None."""
    if opts.source not in SOURCES or opts.target not in SINKS:
        raise UserError(f"--from {opts.source} --to {opts.target}: sources are {', '.join(SOURCES)}, "
                        f"targets {', '.join(SINKS)}")
    if not opts.dry_run:
        _check_output(opts)
    source = open_source(opts.source, opts.input, opts.vocab_size)
    cfg = source.cfg
    groups = tensor_groups(cfg)
    shapes = expected_shapes(cfg)
    if opts.dry_run:
        planned = open_sink(opts, source, DTYPES[opts.dtype or "fp32"])
        echo(f"# {opts.source} {opts.input} -> {opts.target} {opts.output}: {cfg.num_layers} layers, hidden "
             f"{cfg.hidden_size}, {cfg.num_attention_heads} heads ({cfg.kv_heads} kv), vocab {cfg.vocab_size}")
        for label, names in groups:
            echo(f"[{label}]")
            for name in names:
                echo(f"  {source.describe(name)}  ->  {name} {list(shapes[name])}  ->  {planned.describe(name)}")
        return None
    total = sum(math.prod(shapes[n]) for _, names in groups for n in names)
    sink: Sink | None = None
    with tqdm(total=total, unit="param", unit_scale=True, desc=f"convert {opts.source}->{opts.target}",
              disable=not opts.progress) as bar:
        for label, names in groups:
            bar.set_postfix_str(label)
            tensors = source.read(names)
            if sink is None:
                dtype = DTYPES[opts.dtype] if opts.dtype else next(iter(tensors.values())).dtype
                sink = open_sink(opts, source, dtype)
            if opts.dtype:
                tensors = {n: t.to(DTYPES[opts.dtype]) if t.is_floating_point() else t for n, t in tensors.items()}
            sink.write(tensors)
            bar.update(sum(math.prod(shapes[n]) for n in names))
            del tensors
    assert sink is not None
    return sink.finish()
