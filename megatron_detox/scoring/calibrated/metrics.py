"""Agreement of predicted scores with archived Perspective scores."""

from __future__ import annotations

from typing import Any

import numpy as np

TOXIC_AT = 0.5
"""Perspective's toxicity threshold: AUROC labels are ``perspective >= TOXIC_AT``."""


def agreement(predicted: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Spearman, Pearson, AUROC at 0.5 (None when one class is absent), MAE, counts."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    predicted = np.asarray(predicted, np.float64)
    target = np.asarray(target, np.float64)
    n = int(target.shape[0])
    labels = target >= TOXIC_AT
    out: dict[str, Any] = {"n": n, "n_toxic": int(labels.sum())}
    constant = n < 3 or float(np.ptp(predicted)) == 0.0 or float(np.ptp(target)) == 0.0
    out["spearman"] = None if constant else float(spearmanr(predicted, target)[0])
    out["pearson"] = None if constant else float(pearsonr(predicted, target)[0])
    out["auroc"] = float(roc_auc_score(labels, predicted)) if 0 < labels.sum() < n else None
    out["mae"] = float(np.abs(predicted - target).mean()) if n else None
    return out


def binary_auroc(predicted: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, bool)
    return float(roc_auc_score(labels, predicted)) if 0 < labels.sum() < labels.shape[0] else None
