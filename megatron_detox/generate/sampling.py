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

# Top-p without top-k looks for the nucleus among the tokens at least NUCLEUS_START
# times less likely than the row's most likely token, and widens by WIDEN_FACTOR
# until they hold top_p of the mass. Only those candidates are sorted: a full sort of
# a 49k vocabulary costs ~12 ms per row per step on one core, masking and compressing
# a row in numpy ~0.02 ms. The start fits most rows of real text at once (SmolLM2).
NUCLEUS_START = 4096.0
WIDEN_FACTOR = 16.0


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
    search found the set. Rows are independent: a row's pick never depends on the others.
    """
    logits = logits[:, :vocab_size].float()
    if params.greedy:
        return logits.argmax(dim=-1)
    assert uniforms is not None, "sampling needs one uniform per row"
    if params.temperature != 1.0:
        logits = logits / params.temperature
    probs = torch.softmax(logits, dim=-1)  # [batch, vocab]
    u = uniforms.to(probs.device)
    if params.top_k and params.top_k < vocab_size:
        top_probs, top_ids = probs.topk(params.top_k, dim=-1)  # [batch, k], descending
        tau = _nucleus_threshold(top_probs, params.top_p) if params.top_p < 1.0 else top_probs[:, -1:]
        out = _sample_kept(top_probs, top_ids, tau, u)
        # Tokens tied with the last one kept but left out by topk are in the kept set too.
        tied_out = ((probs >= tau).sum(dim=-1) > (top_probs >= tau).sum(dim=-1)).nonzero().squeeze(1)
        for row in tied_out.tolist():
            weights = probs[row].cpu().numpy()
            kept = np.where(weights >= float(tau[row, 0]), weights, 0.0)
            out[row] = _np_inverse_cdf(kept, float(u[row]))
        return out
    # numpy, one row at a time (rows are few; each costs what its nucleus does).
    table, draws = probs.cpu().numpy(), u.cpu().numpy()
    if params.top_p >= 1.0:
        picks = [_np_inverse_cdf(table[i], float(draws[i])) for i in range(len(table))]
    else:
        picks = [_np_nucleus_sample(table[i], params.top_p, float(draws[i])) for i in range(len(table))]
    return torch.tensor(picks, dtype=torch.long, device=probs.device)


def _nucleus_threshold(descending: Tensor, top_p: float) -> Tensor:
    """Probability ``[n, 1]`` of the last nucleus token, from probabilities sorted descending."""
    values = descending.double()
    before = values.cumsum(dim=-1) - values  # mass strictly before each token
    keep = (before < top_p).sum(dim=-1).clamp(min=1)  # nucleus size [n]
    return descending.gather(1, (keep - 1)[:, None])


def _sample_kept(top_probs: Tensor, top_ids: Tensor, tau: Tensor, u: Tensor) -> Tensor:
    """Inverse CDF, in token-id order, over the candidates ``[n, c]`` at or above ``tau`` ``[n, 1]``."""
    ids, order = top_ids.sort(dim=-1)
    by_id = top_probs.gather(1, order)
    kept = torch.where(by_id >= tau, by_id, 0.0).double()  # float64: long sums do not drift
    cdf = kept.cumsum(dim=-1)
    index = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).clamp(max=kept.shape[-1] - 1)
    return ids.gather(1, index).squeeze(1)


def _np_nucleus_sample(probs: np.ndarray, top_p: float, u: float) -> int:
    """Nucleus sampling over one row of probabilities ``[vocab]`` (float32)."""
    threshold = float(probs.max()) / NUCLEUS_START
    while True:
        ids = np.flatnonzero(probs >= threshold)  # the most likely tokens, in id order
        if not ids.size:  # a finite row always has its maximum among them
            raise ValueError("the model produced non-finite logits (NaN); check the weights and dtype")
        candidates = probs[ids]
        widen = threshold > 0.0 and candidates.sum(dtype=np.float64) < top_p
        if not widen:
            descending = np.sort(candidates)[::-1].astype(np.float64)
            cdf = np.cumsum(descending)
            # The nucleus ends inside the candidates only if their own total, summed
            # in this (descending) order, reaches top_p.
            widen = threshold > 0.0 and cdf[-1] < top_p
        if widen:
            threshold = threshold / WIDEN_FACTOR if threshold > np.finfo(np.float32).tiny else 0.0
            continue
        keep = max(int(np.count_nonzero(cdf - descending < top_p)), 1)  # as _nucleus_threshold counts
        kept = candidates >= descending[keep - 1]
        return int(ids[kept][_np_inverse_cdf(candidates[kept], u)])


def _np_inverse_cdf(weights: np.ndarray, u: float) -> int:
    """Index of the first entry whose cumulative weight (in index order) exceeds ``u`` x total."""
    cdf = np.cumsum(weights, dtype=np.float64)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(weights) - 1)
