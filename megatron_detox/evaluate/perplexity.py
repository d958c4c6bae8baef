"""Token-weighted perplexity with a sliding window, over anything that maps tokens to logits.

Each document ``t_0 .. t_{n-1}`` is scored as ``[prefix] + t`` (the prefix token, e.g.
EOD/BOS, lets the model predict ``t_0`` too). Documents longer than ``max_length`` are
covered by windows of ``max_length`` inputs that start every ``stride`` tokens; each
window scores only the targets no earlier window scored, so every target is scored
exactly once and (after the first window) sees at least ``max_length - stride`` tokens
of context (the Hugging Face "perplexity of fixed-length models" recipe; the last window
is extended back to a full ``max_length`` inputs). With ``stride == max_length`` this is
exactly lm-eval's ``loglikelihood_rolling`` (disjoint windows).

Perplexity = ``exp(sum of target NLLs / number of targets)`` over all documents
(token-weighted: a long document weighs more than a short one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from megatron_detox.errors import UserError
from megatron_detox.jsonl import iter_jsonl

LogitsFn = Callable[[Tensor], Tensor]
"""``tokens [batch, seq] -> logits [batch, seq, vocab]`` (a ``Transformer`` is one)."""


@dataclass(frozen=True)
class Window:
    inputs: list[int]
    targets: list[int]
    """``targets[i]`` is the token after ``inputs[i]``; same length as ``inputs``."""
    score_from: int
    """Only targets ``[score_from:]`` count (earlier ones were scored by a previous window)."""
    document: int


@dataclass
class PerplexityResult:
    nll_sum: float = 0.0
    num_tokens: int = 0
    num_documents: int = 0
    max_length: int = 0
    stride: int = 0
    per_document_nll: list[float] = field(default_factory=list)
    per_document_tokens: list[int] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.num_tokens) if self.num_tokens else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "perplexity": self.perplexity,
            "nll_per_token": self.nll_sum / self.num_tokens if self.num_tokens else None,
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "max_length": self.max_length,
            "stride": self.stride,
        }


def sliding_windows(
    tokens: list[int], max_length: int, stride: int, prefix_token: int | None, document: int = 0
) -> list[Window]:
    """Windows covering every target of ``[prefix] + tokens`` exactly once."""
    if not 1 <= stride <= max_length:
        raise UserError(f"stride={stride}: must be in [1, max_length={max_length}]")
    sequence = ([prefix_token] if prefix_token is not None else []) + list(tokens)
    num_targets = len(sequence) - 1
    windows: list[Window] = []
    start, scored_until = 0, 0
    while scored_until < num_targets:
        end = min(start + max_length, num_targets)
        # The last window is pulled back to a full max_length of context (as lm-eval's
        # rolling windows are), rather than starting at the next stride.
        begin = max(0, end - max_length)
        windows.append(Window(sequence[begin:end], sequence[begin + 1:end + 1], scored_until - begin, document))
        scored_until = end
        start += stride
    return windows


@torch.no_grad()
def window_nlls(
    model: LogitsFn, windows: list[Window], batch_size: int = 1, vocab_size: int | None = None,
    device: torch.device | str | None = None, progress: bool = False,
) -> list[float]:
    """Summed NLL of the scored targets of each window (in the order given).

    Windows are batched longest-first and padded on the right: with a causal model
    the padding cannot change the logits of the real positions before it.
    ``vocab_size`` drops the logits of Megatron's padding rows. ``device``: where the
    inputs go (default: the model's parameters' device, else the CPU).
    """
    if device is None:
        parameters = getattr(model, "parameters", None)
        device = next(parameters()).device if parameters is not None else "cpu"
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
    result = [0.0] * len(windows)
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = [windows[i] for i in order[start:start + batch_size]]
        width = max(len(w.inputs) for w in chunk)
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.zeros(len(chunk), width, dtype=torch.long)
        scored = torch.zeros(len(chunk), width, dtype=torch.bool)
        for row, window in enumerate(chunk):
            inputs[row, :len(window.inputs)] = torch.tensor(window.inputs)
            targets[row, :len(window.targets)] = torch.tensor(window.targets)
            scored[row, window.score_from:len(window.targets)] = True
        logits = model(inputs.to(device))  # [batch, width, vocab]
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        # cross_entropy does log-softmax + gather without keeping a [batch, width, vocab] copy.
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.to(logits.device).flatten(),
                              reduction="none").view(len(chunk), width)  # [batch, width]
        sums = (nll * scored.to(nll.device)).sum(dim=1).tolist()
        for offset, value in enumerate(sums):
            result[order[start + offset]] = float(value)
        bar.update(len(chunk))
    bar.close()
    return result


def compute_perplexity(
    model: LogitsFn,
    documents: Iterable[list[int]],
    *,
    max_length: int,
    stride: int | None = None,
    prefix_token: int | None = None,
    batch_size: int = 1,
    vocab_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Token-weighted perplexity of ``model`` over token-id ``documents``."""
    stride = max_length if stride is None else stride
    windows: list[Window] = []
    counts: list[int] = []
    for number, tokens in enumerate(documents):
        windows.extend(sliding_windows(tokens, max_length, stride, prefix_token, number))
        counts.append(len(tokens) - (0 if prefix_token is not None else min(1, len(tokens))))
    nlls = window_nlls(model, windows, batch_size, vocab_size, device, progress)
    per_document = [0.0] * len(counts)
    for window, nll in zip(windows, nlls):
        per_document[window.document] += nll
    return PerplexityResult(
        nll_sum=sum(per_document), num_tokens=sum(counts), num_documents=len(counts),
        max_length=max_length, stride=stride, per_document_nll=per_document, per_document_tokens=counts)


# --------------------------------------------------------------------------- sources


def indexed_prefix(path: str | Path) -> Path | None:
    """The ``.bin/.idx`` prefix ``path`` names (``P``, ``P.bin`` or ``P.idx``), else None."""
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
    if Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file():
        return prefix
    return None


def load_documents(
    path: str | Path, encode: Callable[[str], list[int]] | None, json_key: str = "text"
) -> Iterator[list[int]]:
    """Token ids per document of a ``.bin/.idx`` prefix, a JSONL file or a text file.

    - ``.bin/.idx`` (megatron-core ``IndexedDataset``): one document per indexed
      document (already tokenized, EOD included as preprocessing wrote it);
    - ``.jsonl``: one document per record, the text under ``json_key``;
    - anything else: the whole file is one document (the usual WikiText protocol).
    """
    prefix = indexed_prefix(path)
    if prefix is not None:
        yield from _indexed_documents(prefix)
        return
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; pass a .jsonl/.txt file or a .bin/.idx prefix")
    if encode is None:
        raise UserError(f"{path}: text needs a tokenizer; pass --tokenizer or a model that has one")
    if path.suffix == ".jsonl":
        for line, record in iter_jsonl(path):
            text = record.get(json_key)
            if not isinstance(text, str):
                raise UserError(f"{path}:{line}: field {json_key!r} is missing or not a string; "
                                f"pass --json-key with the field that holds the text")
            if text:
                yield encode(text)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    yield encode(text)


def _indexed_documents(prefix: Path) -> Iterator[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        dataset = IndexedDataset(str(prefix), mmap=True)
    except (AssertionError, ValueError, OSError) as error:
        raise UserError(f"{prefix}.idx: not a readable megatron-core indexed dataset ({error})") from None
    bounds = dataset.document_indices  # [num_documents + 1] sequence offsets
    for doc in range(len(bounds) - 1):
        tokens: list[int] = []
        for sequence in range(int(bounds[doc]), int(bounds[doc + 1])):
            tokens.extend(int(t) for t in dataset[sequence])
        yield tokens
