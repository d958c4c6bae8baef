"""Next-token selection: greedy, temperature, top-k, top-p, with per-sample randomness.

Every sample id owns a ``torch.Generator`` seeded from ``(seed, sample_id)`` and draws
exactly one uniform per sampled token. The token is then picked by inverse-CDF over
the (filtered, renormalized) distribution, vectorized over the batch. So the text of a
sample id depends only on the seed, the id and the model, never on which other
samples share its batch, the batch size or the number of data-parallel ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Top-p first looks at the 256 most likely tokens; only rows whose nucleus is wider
# look further (a full sort of a 49k vocabulary costs ~12 ms per row per step on one
# core, more than the rest of sampling together).
NUCLEUS_CANDIDATES = 256


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens; 0 keeps all."""
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and self.temperature <= 0.0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (use greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")


def sample_seed(seed: int, sample_id: int) -> int:
    """A 63-bit seed for sample ``sample_id``; hashing decorrelates neighbouring ids."""
    digest = hashlib.sha256(f"generate:{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """The CPU generator every draw of sample ``sample_id`` comes from."""
    return torch.Generator().manual_seed(sample_seed(seed, sample_id))


def draw_uniforms(generators: Sequence[torch.Generator]) -> Tensor:
    """One uniform in [0, 1) per row, each from the row's own generator. ``[batch]`` float64."""
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])


def sample_next(logits: Tensor, params: SamplingParams, vocab_size: int, uniforms: Tensor | None) -> Tensor:
    """Pick one token per row. logits ``[batch, padded_vocab]`` -> ids ``[batch]`` (long).

    Columns ``>= vocab_size`` are Megatron's vocabulary padding and never chosen.
    ``uniforms`` (``[batch]``, from :func:`draw_uniforms`) is unused when greedy.

    The kept set is the top-k tokens, then the nucleus: the most likely tokens until
    their mass reaches top_p, with every token as likely as the last one kept (ties
    are all in or all out, so the set never depends on sort order). The pick is the
    inverse CDF of the renormalized kept set *in token-id order*: the same
    distribution as sorting by probability, and the same answer whichever candidate
    search found the set.
    """
    logits = logits[:, :vocab_size].float()
    if params.greedy:
        return logits.argmax(dim=-1)
    assert uniforms is not None, "sampling needs one uniform per row"
    probs = torch.softmax(logits / params.temperature, dim=-1)  # [batch, vocab]
    u = uniforms.to(probs.device)
    k = min(params.top_k, vocab_size) if params.top_k else vocab_size
    if k == vocab_size and params.top_p >= 1.0:  # plain sampling over the whole vocabulary
        table, draws = probs.cpu().numpy(), u.cpu().numpy()
        picks = [_np_inverse_cdf(table[i], float(draws[i])) for i in range(len(table))]
        return torch.tensor(picks, dtype=torch.long, device=probs.device)
    width = min(k, NUCLEUS_CANDIDATES) if params.top_p < 1.0 else k
    top_probs, top_ids = probs.topk(width, dim=-1)  # [batch, width], descending
    out = _sample_candidates(top_probs, top_ids, params.top_p, u)
    if width < k:
        # Rows whose candidates hold less than top_p of the mass need a wider view.
        wide = top_probs.double().sum(dim=-1) < params.top_p
        if bool(wide.any()):
            rows = wide.nonzero().squeeze(1)
            if k < vocab_size:
                wide_probs, wide_ids = probs[rows].topk(k, dim=-1)
                out[rows] = _sample_candidates(wide_probs, wide_ids, params.top_p, u[rows])
            else:
                out[rows] = _sample_above_threshold(probs[rows], params.top_p, u[rows])
    return out


def _nucleus_threshold(descending: Tensor, top_p: float) -> Tensor:
    """Probability ``[n, 1]`` of the last nucleus token, from probabilities sorted descending."""
    values = descending.double()
    before = values.cumsum(dim=-1) - values  # mass strictly before each token
    keep = (before < top_p).sum(dim=-1).clamp(min=1)  # nucleus size [n]
    return descending.gather(1, (keep - 1)[:, None])


def _inverse_cdf_by_id(probs: Tensor, u: Tensor, ids: Tensor | None = None) -> Tensor:
    """Inverse CDF over ``probs`` ``[n, m]`` (zeros = excluded) in column order; returns ids."""
    cdf = probs.double().cumsum(dim=-1)  # float64: 49k-term sums do not drift
    index = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).clamp(max=probs.shape[-1] - 1)
    return (index if ids is None else ids.gather(1, index)).squeeze(1)


def _sample_candidates(top_probs: Tensor, top_ids: Tensor, top_p: float, u: Tensor) -> Tensor:
    """Sample among candidates ``[n, c]`` (descending) that surely contain the kept set."""
    tau = _nucleus_threshold(top_probs, top_p) if top_p < 1.0 else top_probs[:, -1:]
    ids, order = top_ids.sort(dim=-1)  # token-id order
    by_id = top_probs.gather(1, order)
    return _inverse_cdf_by_id(torch.where(by_id >= tau, by_id, 0.0), u, ids)


def _sample_above_threshold(probs: Tensor, top_p: float, u: Tensor) -> Tensor:
    """Nucleus sampling for flat rows ``[n, vocab]``, in numpy.

    The threshold comes from the sorted *values* only: numpy's SIMD sort of values is
    ~10x faster than ``torch.sort`` (which also moves indices, ~12 ms per 49k row),
    and numpy's float64 ``cumsum`` of a row is ~10x faster than torch's on CPU.
    """
    rows = probs.float().cpu().numpy()
    descending = np.sort(rows, axis=-1)[:, ::-1]
    cdf = np.cumsum(descending, axis=-1, dtype=np.float64)
    draws = u.cpu().numpy()
    out = np.empty(len(rows), dtype=np.int64)
    for row in range(len(rows)):
        # Tokens whose preceding mass is below top_p: the first, plus every j with cdf[j] < top_p.
        keep = min(int(np.searchsorted(cdf[row], top_p, side="left")) + 1, rows.shape[1])
        kept = np.where(rows[row] >= descending[row, keep - 1], rows[row], 0.0)
        out[row] = _np_inverse_cdf(kept, float(draws[row]))
    return torch.from_numpy(out).to(probs.device)


def _np_inverse_cdf(weights: np.ndarray, u: float) -> int:
    """Index of the first entry whose cumulative weight (in index order) exceeds ``u`` x total."""
    cdf = np.cumsum(weights, dtype=np.float64)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(weights) - 1)
