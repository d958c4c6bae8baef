"""The run configuration: one typed dataclass tree.

Values come from the dataclass defaults, then a YAML file, then dotted ``key=value``
overrides from the command line (Hydra/NeMo style)::

    megatron-detox train configs/train/tiny.yaml optim.lr=2e-5 parallel.tp=2

Unknown keys, wrong types and impossible values raise :class:`ConfigError` (a
``UserError``: one line, exit code 2) naming the key, the value and the reason,
before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.presets import DEFAULT_MODEL, PRESETS


class ConfigError(UserError):
    """A bad key, type or value in a config file or override."""


@dataclass
class ModelSection(ModelConfig):
    """The architecture (all ModelConfig fields) plus where it comes from.

    ``preset`` fills every architecture field first; fields given next to it override.
    """

    preset: str | None = None
    """A name from ``megatron-detox models``; its fields are the starting point."""
    pretrained: str | None = None
    """Weights to start from: a preset with weights (smollm2-135m), a .gguf file, an HF folder
    or a checkpoint directory. None means random initialization from ``train.seed``."""

    def to_model_config(self) -> ModelConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**values)


@dataclass
class ParallelConfig:
    """Megatron-style layout. world size = dp_replicate * dp_shard * pp * tp."""

    tp: int = 1
    """Tensor-parallel degree (heads, query groups and FFN split across ranks)."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations along the sequence across the TP group."""
    pp: int = 1
    """Pipeline-parallel stages."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank (interleaved 1F1B when > 1)."""
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    pp_layers_per_stage: list[int] | None = None
    """Explicit layer counts per (virtual) stage; None splits evenly."""
    num_microbatches: int | None = None
    """Pipeline micro-batches per step; None uses gradient accumulation steps."""
    dp_replicate: int = 1
    """Replicated data-parallel degree (DDP-like)."""
    dp_shard: int = -1
    """FSDP2 sharding degree; -1 takes whatever of the world size is left."""
    cpu_offload: bool = False
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    compile: bool = False
    """torch.compile each transformer block."""


@dataclass
class DataConfig:
    """Training data. Relative paths are relative to the current directory (run from the repo root)."""

    paths: list[str] = field(default_factory=list)
    """Megatron data paths: prefixes of .bin/.idx, optionally weighted: [0.3, A, 0.7, B]."""
    text_files: list[str] = field(default_factory=list)
    """Plain text (one document per non-blank line) / JSONL files, tokenized once into a cached
    indexed dataset under ``cache_dir``."""
    json_key: str = "text"
    """JSON key of the text in ``text_files`` (dotted for nested objects)."""
    split: str = "969,30,1"
    """train,valid,test proportions as in Megatron."""
    seq_length: int = 2048
    tokenizer: str | None = None
    """Tokenizer spec (files, see ``megatron_detox.tokenizers.load_tokenizer``); None uses the model's own."""
    cache_dir: str | None = None
    """Tokenized ``text_files`` and megatron-core index files; None means ``<train.run_dir>/data_cache``."""
    num_workers: int = 0
    """Tokenizer processes for ``text_files`` (0 or 1: in-process)."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    schedule: Literal["constant", "cosine", "linear", "wsd"] = "cosine"
    warmup_steps: int = 0
    decay_fraction: float = 0.1
    """WSD: fraction of steps spent in the final decay."""


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    """config.yaml, metrics.jsonl, checkpoints/ (resumed from checkpoints/latest when present)."""
    method: Literal["full", "adapter", "prefix"] = "full"
    seed: int = 1234
    """Initial weights (layout-invariant), data order and dropout."""
    steps: int = 100
    """Optimizer steps in total (a resumed run continues to this count)."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; the rest of the global batch is gradient accumulation."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_interval: int = 1
    """Refresh the progress bar's loss and tokens/s every N steps (metrics.jsonl gets every step)."""
    eval_interval: int = 0
    """Evaluate every N steps; 0 never."""
    eval_steps: int = 10
    """Validation global batches per evaluation (the same ones each time)."""
    save_interval: int = 0
    """Checkpoint every N steps; 0 only at the end and on SIGTERM."""
    keep_last: int = 2
    """Complete checkpoints to keep (oldest deleted first); 0 keeps all."""
    freeze: list[str] = field(default_factory=list)
    """Parameter-name globs to freeze."""
    initial_loss_scale: float = 65536.0
    """fp16: starting dynamic loss scale (halved on overflow, doubled after loss_scale_window good steps)."""
    loss_scale_window: int = 1000
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one device, for the MFU metric; 0 leaves MFU out of metrics.jsonl."""


@dataclass
class GenerateConfig:
    """Sampling for ``generate`` and for the SGEAT corpus (``sgeat run``'s generate stage)."""

    max_new_tokens: int = 1000
    """Tokens per sample at most (the paper: 1000)."""
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    """0: no top-k cut."""
    greedy: bool = False
    seed: int = 1234
    """Sample ``i`` draws from its own generator seeded from (seed, i): the corpus does not depend on
    batch size or layout."""
    batch_size: int = 32
    """Samples decoded together (memory permitting); does not change the text."""
    cpu_workers: int = 0
    """A single-process run on CPU decodes in this many forked processes, the threads and the batch
    shared out among them (0: one per CPU thread; 1: in this process). Does not change the text."""
    num_samples: int = 0
    """``sgeat.mode: standard``: unconditional samples to write (the paper: 100000)."""
    prompts: str | None = None
    """``sgeat.mode: prompted``: JSONL prompt file (text under ``prompt_key``)."""
    prompt_key: str = "prompt.text"
    repeat: int = 1
    """``sgeat.mode: prompted``: samples per prompt."""
    num_prompts: int = 0
    """Only the first N prompts of ``prompts`` (0: all)."""
    ignore_eos: bool = False
    """Always write ``max_new_tokens`` tokens. Default: a sample ends at the tokenizer's end-of-document
    token or the model's eos (the embedded SmolLM2-Instruct GGUF: ``<|im_end|>`` for both)."""


@dataclass
class ScoreConfig:
    """The toxicity scorer of the SGEAT score stage and of the evaluation."""

    scorer: str = "auto"
    """A name of ``megatron_detox.scoring.registry.SCORER_NAMES`` (perspective, calibrated, profanity,
    hf-classifier), or auto: perspective when a key is set (``$PERSPECTIVE_API_KEY`` / ``api_key_file``),
    else the offline default, ``calibrated``."""
    attributes: list[str] = field(default_factory=lambda: [
        "toxicity", "severe_toxicity", "sexually_explicit", "threat", "profanity", "identity_attack"])
    """Perspective attributes requested."""
    perspective_url: str | None = None
    """Perspective endpoint (a proxy or a local ``perspective-server``); None: Google's."""
    api_key_file: str | None = None
    """File holding the Perspective key; None reads ``$PERSPECTIVE_API_KEY``. Never the key itself."""
    qps: float = 1.0
    """Perspective requests per second (the quota)."""
    workers: int = 1
    """Concurrent scoring requests / batches."""
    hf_classifier_path: str | None = None
    """``scorer: hf-classifier``: a local transformers sequence-classification folder."""


@dataclass
class EvalConfig:
    """RealToxicityPrompts evaluation and perplexity (``sgeat run``'s evaluate stage; ``eval`` defaults)."""

    prompts: list[str] = field(default_factory=list)
    """RTP JSONL files (prompt.text, prompt.toxicity), read in order as one prompt list; empty: the
    held-out RTP prompts shipped in the package (100 toxic + 100 non-toxic, see
    megatron_detox/data/packaged/README.md). For the full RTP set, name its prompts.jsonl."""
    num_prompts: int = 0
    """Only the first N prompts of each file (0: all)."""
    samples: int = 25
    """Continuations per prompt (RTP protocol: 25)."""
    max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 1234
    batch_size: int = 8
    cpu_workers: int = 0
    """As ``generate.cpu_workers``, for the continuations."""
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    threshold_inclusive: bool = True
    """Toxicity Probability counts a prompt when a sample has toxicity >= 0.5 (true, RTP's definition) or
    > 0.5 (false, the paper's released script)."""
    perplexity_files: list[str] = field(default_factory=list)
    """Held-out text for perplexity (.txt: one document per file, .jsonl: one per record); empty: the
    WikiText-2 test slice shipped in the package."""
    perplexity_max_tokens: int = 0
    """Score only the first N tokens of each perplexity document (0: all)."""
    perplexity_window: int = 512
    """Sliding-window length (tokens of context at most)."""


@dataclass
class SgeatConfig:
    """``megatron-detox sgeat run``: generate -> score -> filter -> preprocess -> train -> evaluate -> report."""

    work_dir: str = "runs/sgeat"
    """The run folder: one subfolder per stage and manifest.json."""
    mode: Literal["standard", "prompted", "dapt"] = "standard"
    """standard: ``generate.num_samples`` unconditional samples from BOS; prompted: ``generate.repeat``
    samples per prompt of ``generate.prompts``; dapt: no generation, filter ``corpus`` instead."""
    corpus: str | None = None
    """dapt: a JSONL corpus (text under ``data.json_key``) to score, filter and train on."""
    keep_fraction: float = 0.5
    """Share of the scored corpus kept, least toxic first (the paper: 0.5)."""
    filter_attribute: str = "toxicity"
    """Score the filter ranks by."""
    evaluate_base: bool = True
    """Also evaluate the base model (the report's "before" column)."""
    prompt_tokens: Literal["context", "train", "drop"] = "context"
    """prompted: where the prompt goes in a training document. context: before the kept continuation,
    conditioning it without loss (the model learns to continue the prompt this way); train: before it
    and in the loss (toxic prompts' tokens included, which raised toxicity in docs/results.md); drop:
    the continuation alone. The filter ranks by the continuation's score either way."""


@dataclass
class AdapterConfig:
    """Houlsby bottleneck adapters (``train.method: adapter``)."""

    bottleneck: int = 256
    """Inner width r of each adapter (down h -> r, up r -> h)."""
    placement: Literal["attention", "mlp", "both"] = "both"
    """After the attention output projection, after the MLP, or both."""
    layers: list[int] | None = None
    """Layer indices to adapt; None means all."""
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    dropout: float = 0.0
    """Dropout on the adapter branch before its residual add."""
    init_std: float = 0.0
    """Std of the up-projection init; 0 starts exactly at the base model."""


@dataclass
class PrefixConfig:
    """Prefix KV-injection (``train.method: prefix``), Li & Liang 2021."""

    length: int = 100
    """P: learned keys/values per layer and key/value head, prepended without position."""
    reparameterize: bool = True
    """Train through a per-layer MLP (folded into static keys/values by ``peft merge``)."""
    hidden_size: int = 512
    """Width of the reparameterization MLP."""


@dataclass
class PeftConfig:
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(preset=DEFAULT_MODEL))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sgeat: SgeatConfig = field(default_factory=SgeatConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Defaults < YAML file < ``key=value`` overrides, then validation."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(raw, key, value)
    model_raw = raw.get("model", {})
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a mapping, got {type(model_raw).__name__}")
    raw["model"] = _expand_preset(model_raw)
    cfg = _build(RunConfig, raw, "")
    validate(cfg)
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=2e-5")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _expand_preset(model_raw: dict[str, Any]) -> dict[str, Any]:
    # An explicit ``preset: null`` means every architecture field comes from the YAML.
    name = model_raw.get("preset", DEFAULT_MODEL)
    if name is None:
        return model_raw
    if name not in PRESETS:
        hint = _did_you_mean(str(name), list(PRESETS))
        raise ConfigError(f"model.preset={name!r}: unknown preset{hint}; valid: {', '.join(PRESETS)}")
    merged: dict[str, Any] = dataclasses.asdict(PRESETS[name])
    merged.update(model_raw)
    merged["preset"] = name
    return merged


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            hint = _did_you_mean(str(key), names)
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: invalid")
    if origin is Literal:
        if value not in args:
            hint_text = _did_you_mean(str(value), [str(a) for a in args])
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, args))}{hint_text}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. {key}=[a,b]")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "2e-5" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    raise TypeError(f"config field {key} has unsupported type {hint}")  # internal bug


# --------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError for the first impossible value or combination."""
    for field_name, value, reason in cfg.model.validate():
        raise ConfigError(f"model.{field_name}={value!r}: {reason}")
    p = cfg.parallel
    for name in ("tp", "pp", "virtual_stages", "dp_replicate"):
        if getattr(p, name) < 1:
            raise ConfigError(f"parallel.{name}={getattr(p, name)}: must be >= 1")
    if p.dp_shard == 0 or p.dp_shard < -1:
        raise ConfigError(f"parallel.dp_shard={p.dp_shard}: must be >= 1, or -1 for the rest of the world")
    m = cfg.model
    if m.num_attention_heads % p.tp:
        raise ConfigError(f"parallel.tp={p.tp}: does not divide model.num_attention_heads={m.num_attention_heads}")
    if m.kv_heads % p.tp:
        raise ConfigError(f"parallel.tp={p.tp}: does not divide the query groups (model.num_query_groups={m.kv_heads})")
    if m.ffn_size % p.tp:
        raise ConfigError(f"parallel.tp={p.tp}: does not divide model.ffn_hidden_size={m.ffn_size}")
    if m.padded_vocab_size % p.tp:
        raise ConfigError(f"parallel.tp={p.tp}: does not divide the padded vocabulary ({m.padded_vocab_size})")
    stages = p.pp * p.virtual_stages
    if p.virtual_stages > 1 and p.pp_schedule != "interleaved_1f1b":
        raise ConfigError(f"parallel.virtual_stages={p.virtual_stages}: needs parallel.pp_schedule=interleaved_1f1b")
    if p.pp_layers_per_stage is not None:
        if len(p.pp_layers_per_stage) != stages:
            raise ConfigError(f"parallel.pp_layers_per_stage={p.pp_layers_per_stage}: needs {stages} entries "
                              f"(pp * virtual_stages)")
        if sum(p.pp_layers_per_stage) != m.num_layers or min(p.pp_layers_per_stage) < 1:
            raise ConfigError(f"parallel.pp_layers_per_stage={p.pp_layers_per_stage}: must be positive and sum "
                              f"to model.num_layers={m.num_layers}")
    elif m.num_layers < stages:
        raise ConfigError(f"parallel.pp={p.pp}: model.num_layers={m.num_layers} is fewer than the "
                          f"{stages} pipeline stages")
    t = cfg.train
    if t.global_batch_size < 1 or t.micro_batch_size < 1:
        raise ConfigError("train.global_batch_size and train.micro_batch_size must be >= 1")
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size}: must be a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size}")
    o = cfg.optim
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        raise ConfigError(f"optim.lr={o.lr}, optim.min_lr={o.min_lr}: need 0 <= min_lr <= lr and lr > 0")
    if not (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0) or o.eps <= 0 or o.weight_decay < 0 or o.clip_grad < 0:
        raise ConfigError("optim: betas must be in [0, 1), eps > 0, weight_decay >= 0 and clip_grad >= 0")
    if o.warmup_steps < 0 or not 0.0 < o.decay_fraction <= 1.0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps}, optim.decay_fraction={o.decay_fraction}: "
                          "need warmup_steps >= 0 and decay_fraction in (0, 1]")
    if t.steps < 0 or t.eval_steps < 1 or min(t.eval_interval, t.save_interval, t.keep_last) < 0:
        raise ConfigError("train: steps, eval_interval, save_interval and keep_last must be >= 0, eval_steps >= 1")
    if t.initial_loss_scale <= 0 or t.loss_scale_window < 1:
        raise ConfigError("train.initial_loss_scale must be > 0 and train.loss_scale_window >= 1")
    _validate_split(cfg.data.split)
    if cfg.data.seq_length > m.max_position_embeddings or cfg.data.seq_length < 1:
        raise ConfigError(f"data.seq_length={cfg.data.seq_length}: must be in [1, "
                          f"model.max_position_embeddings={m.max_position_embeddings}]")
    if p.sequence_parallel and cfg.data.seq_length % p.tp:
        raise ConfigError(f"data.seq_length={cfg.data.seq_length}: must be a multiple of parallel.tp={p.tp} with "
                          "parallel.sequence_parallel=true (the sequence is split over the TP ranks)")
    if not 0.0 < cfg.sgeat.keep_fraction <= 1.0:
        raise ConfigError(f"sgeat.keep_fraction={cfg.sgeat.keep_fraction}: must be in (0, 1]")
    _validate_generate_eval(cfg)


def _validate_generate_eval(cfg: RunConfig) -> None:
    g = cfg.generate
    if not 0.0 < g.top_p <= 1.0:
        raise ConfigError(f"generate.top_p={g.top_p}: must be in (0, 1]")
    if g.temperature <= 0.0:
        raise ConfigError(f"generate.temperature={g.temperature}: must be > 0 (use generate.greedy=true)")
    for name in ("max_new_tokens", "batch_size", "repeat"):
        if getattr(g, name) < 1:
            raise ConfigError(f"generate.{name}={getattr(g, name)}: must be >= 1")
    if min(g.num_samples, g.top_k, g.num_prompts, g.cpu_workers) < 0:
        raise ConfigError("generate.num_samples, generate.top_k, generate.num_prompts and generate.cpu_workers "
                          "must be >= 0")
    s = cfg.score
    if s.qps <= 0 or s.workers < 1:
        raise ConfigError(f"score.qps={s.qps}, score.workers={s.workers}: need qps > 0 and workers >= 1")
    e = cfg.eval
    for name in ("samples", "max_new_tokens", "batch_size", "perplexity_window"):
        if getattr(e, name) < 1:
            raise ConfigError(f"eval.{name}={getattr(e, name)}: must be >= 1")
    if min(e.num_prompts, e.bootstrap_samples, e.perplexity_max_tokens, e.cpu_workers) < 0:
        raise ConfigError("eval.num_prompts, eval.bootstrap_samples, eval.perplexity_max_tokens and "
                          "eval.cpu_workers must be >= 0")
    if not 0.0 < e.top_p <= 1.0 or e.temperature <= 0.0:
        raise ConfigError(f"eval.top_p={e.top_p}, eval.temperature={e.temperature}: need top_p in (0, 1] and "
                          "temperature > 0")


def _validate_split(split: str) -> None:
    """Megatron's ``train,valid,test`` weights: up to three numbers >= 0, not all 0."""
    try:
        values = [float(part) for part in split.replace("/", ",").split(",")]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3 or not all(0.0 <= v < float("inf") for v in values) or sum(values) <= 0:
        raise ConfigError(f"data.split={split!r}: expected up to three weights train,valid,test >= 0, "
                          "not all 0, e.g. 969,30,1")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
