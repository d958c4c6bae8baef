"""Offline scorer: any local ``transformers`` sequence-classification folder.

Typical use is a toxicity classifier the user already has on disk (e.g. a
toxic-BERT checkpoint). Labels come from ``config.id2label`` (lower-cased, or
renamed through ``label_map``); multi-label models get a sigmoid per label,
single-label ones a softmax. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.scoring.base import ScoreOutcome, Scorer

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def fingerprint_model(folder: Path) -> str:
    """Short sha256 over config and weight files: the scorer version (cache key)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in _WEIGHT_SUFFIXES:
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class HFClassifierScorer(Scorer):
    """Batched inference with a local ``AutoModelForSequenceClassification``."""

    name = "hf-classifier"

    def __init__(
        self,
        model_path: str | Path,
        *,
        batch_size: int = 32,
        max_length: int = 512,
        device: str = "cpu",
        label_map: Mapping[str, str] | None = None,
    ) -> None:
        folder = Path(model_path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: not a transformers model folder (no config.json): check --hf-model")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError:
            raise UserError("the hf-classifier scorer needs transformers: pip install 'megatron-detox[hf]'") from None
        self._torch: Any = torch
        self._tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model: Any = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        self._model = model.to(device).eval()
        self._device = device
        self.batch_size = batch_size
        config = self._model.config
        # Tokenizers saved without a limit report ~1e30; the position table is the real bound.
        limits = [max_length, getattr(self._tokenizer, "model_max_length", None) or max_length]
        if getattr(config, "max_position_embeddings", None):
            limits.append(config.max_position_embeddings)
        self.max_length = int(min(limits))
        self._multi_label = config.problem_type == "multi_label_classification"
        renames = {k.lower(): v.lower() for k, v in (label_map or {}).items()}
        labels = [str(config.id2label[i]).lower() for i in range(config.num_labels)]
        self.attributes = tuple(renames.get(label, label) for label in labels)
        if len(set(self.attributes)) != len(self.attributes):
            raise UserError(f"{folder}: duplicate label names {self.attributes}: fix --hf-label-map")
        self.version = f"{folder.name}-{fingerprint_model(folder)}"
        self._lock = threading.Lock()

    def score_detailed(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        outcomes: list[ScoreOutcome] = []
        for start in range(0, len(texts), self.batch_size):
            outcomes.extend(self._score_batch(texts[start : start + self.batch_size]))
        return outcomes

    def _score_batch(self, texts: Sequence[str]) -> list[ScoreOutcome]:
        if not texts:
            return []
        torch = self._torch
        # Characters beyond ~32 per token can never be reached after truncation;
        # cutting them first keeps a 2 MB text from costing seconds of tokenization.
        clipped = [text[: self.max_length * 32] for text in texts]
        with self._lock, torch.inference_mode():
            encoded = self._tokenizer(
                clipped,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._device)
            logits = self._model(**encoded).logits.float()  # [batch, num_labels]
            if self._multi_label or logits.shape[-1] == 1:
                probabilities = torch.sigmoid(logits)
            else:
                probabilities = torch.softmax(logits, dim=-1)
        rows = probabilities.cpu().tolist()
        return [ScoreOutcome.success(dict(zip(self.attributes, map(float, row), strict=True))) for row in rows]
