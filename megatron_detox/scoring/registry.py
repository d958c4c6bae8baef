"""``build_scorer(name, **options)``: the one place that maps scorer names to classes."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from megatron_detox.errors import UserError
from megatron_detox.scoring import protocol
from megatron_detox.scoring.apikey import ApiKey, load_api_key
from megatron_detox.scoring.base import DEFAULT_ATTRIBUTES, Scorer
from megatron_detox.scoring.retry import RetryPolicy

log = logging.getLogger(__name__)

SCORER_NAMES: tuple[str, ...] = ("perspective", "calibrated", "profanity", "hf-classifier")
OFFLINE_DEFAULT = "calibrated"
"""The default without a Perspective key: it beats ``profanity`` on the held-out table (docs/scorers.md)."""


def is_loopback_url(url: str) -> bool:
    """True for ``http(s)://localhost|127.x|::1``: a local server that needs no key."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_scorer_name(api_key: ApiKey | None) -> str:
    """``perspective`` when a key is available, else the offline ``calibrated``."""
    return "perspective" if api_key is not None else OFFLINE_DEFAULT


def build_scorer(
    name: str | None = None,
    *,
    api_key: ApiKey | None = None,
    api_key_file: str | Path | None = None,
    perspective_url: str = protocol.DEFAULT_URL,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    languages: Sequence[str] = ("en",),
    qps: float = 1.0,
    max_bytes: int = protocol.DEFAULT_MAX_BYTES,
    timeout_s: float = 30.0,
    max_attempts: int = 6,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    workers: int = 1,
    hf_model: str | Path | None = None,
    hf_batch_size: int = 32,
    hf_max_length: int = 512,
    hf_label_map: Mapping[str, str] | None = None,
    device: str = "cpu",
    calibrated_head: str | Path | None = None,
    **unknown: Any,
) -> Scorer:
    """Build a scorer by name; ``None`` picks Perspective if a key is set, else ``calibrated``.

    The Perspective key is ``api_key``, else read from ``api_key_file``, else
    ``$PERSPECTIVE_API_KEY``; it may be absent only for a loopback endpoint.
    """
    if unknown:
        raise TypeError(f"unknown scorer options: {sorted(unknown)}")
    if api_key is None and (name in (None, "perspective")):
        api_key = load_api_key(api_key_file)
    name = name or default_scorer_name(api_key)
    if name == "perspective":
        from megatron_detox.scoring.perspective import PerspectiveScorer

        if api_key is None and not is_loopback_url(perspective_url):
            raise UserError(
                "the perspective scorer needs a key: set PERSPECTIVE_API_KEY or pass --api-key-file "
                "(or use --scorer calibrated offline)"
            )
        if not qps > 0:
            raise UserError(f"--qps must be > 0, got {qps}")
        if max_attempts < 1:
            raise UserError(f"--max-attempts must be >= 1, got {max_attempts}")
        if not timeout_s > 0:
            raise UserError(f"--timeout must be > 0 seconds, got {timeout_s}")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise UserError(f"--backoff-base and --backoff-max must be >= 0, got {backoff_base_s}, {backoff_max_s}")
        retry = RetryPolicy(max_attempts=max_attempts, base_delay_s=backoff_base_s, max_delay_s=backoff_max_s)
        return PerspectiveScorer(
            api_key,
            url=perspective_url,
            attributes=attributes,
            languages=languages,
            qps=qps,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            retry=retry,
            pool_size=max(workers, 1),
        )
    if name == "calibrated":
        from megatron_detox.scoring.calibrated.scorer import CalibratedScorer

        if max_bytes < 1:
            raise UserError(f"--max-bytes must be >= 1, got {max_bytes}")
        return CalibratedScorer(calibrated_head, max_bytes=max_bytes)
    if name == "profanity":
        from megatron_detox.scoring.profanity import ProfanityScorer

        return ProfanityScorer()
    if name == "hf-classifier":
        from megatron_detox.scoring.hf_classifier import HFClassifierScorer

        if hf_model is None:
            raise UserError("the hf-classifier scorer needs --hf-model <local model folder>")
        return HFClassifierScorer(
            hf_model,
            batch_size=hf_batch_size,
            max_length=hf_max_length,
            device=device,
            label_map=hf_label_map,
        )
    raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(SCORER_NAMES)}")
