"""The fitted head: a linear model per attribute on logit scores, then isotonic calibration.

Files (``HEAD_FILES``): ``head.safetensors`` holds ``weight`` [num_attributes,
num_features] (float16: halves the shipped size; the recorded metrics are measured
with these rounded weights), ``bias`` [num_attributes] and per attribute the
isotonic knots ``calibration.<attribute>.x`` / ``.y``; ``head.json`` holds the
feature spec, the attribute order, the training settings and the held-out metrics.

``predict``: ``z = features @ weight.T + bias`` (a logit on Perspective's scale),
then ``p = interp(z, x, y)`` -- a non-decreasing map into [0, 1] fitted on the
calibration split, so 0.5 means what Perspective's 0.5 means on that data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from megatron_detox.atomic import write_json_atomic
from megatron_detox.errors import UserError
from megatron_detox.scoring.calibrated.features import FeatureSpec

HEAD_FILES = ("head.safetensors", "head.json")
LOGIT_CLIP = 1e-3
"""Targets are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit."""


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p / (1.0 - p))


@dataclass
class Head:
    spec: FeatureSpec
    attributes: tuple[str, ...]
    weight: np.ndarray  # [num_attributes, num_features] float16
    bias: np.ndarray  # [num_attributes] float32
    knots: dict[str, tuple[np.ndarray, np.ndarray]]  # attribute -> (x, y) isotonic knots
    meta: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None

    def logits(self, features: sp.csr_matrix) -> np.ndarray:
        """``[num_texts, num_attributes]`` raw logits."""
        weight = self.weight.astype(np.float32)
        return np.asarray(features @ weight.T, dtype=np.float64) + self.bias.astype(np.float64)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        out = np.empty_like(logits)
        for column, attribute in enumerate(self.attributes):
            x, y = self.knots[attribute]
            out[:, column] = np.interp(logits[:, column], x, y)
        return np.clip(out, 0.0, 1.0)

    def predict(self, features: sp.csr_matrix) -> np.ndarray:
        """``[num_texts, num_attributes]`` calibrated scores in [0, 1]."""
        return self.calibrate(self.logits(features))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": np.ascontiguousarray(self.weight), "bias": np.ascontiguousarray(self.bias)}
        for attribute, (x, y) in self.knots.items():
            tensors[f"calibration.{attribute}.x"] = np.ascontiguousarray(x, dtype=np.float64)
            tensors[f"calibration.{attribute}.y"] = np.ascontiguousarray(y, dtype=np.float64)
        tmp = folder / (HEAD_FILES[0] + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(folder / HEAD_FILES[0])
        meta = {**self.meta, "features": self.spec.to_json(), "attributes": list(self.attributes)}
        write_json_atomic(folder / HEAD_FILES[1], meta)


def head_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in HEAD_FILES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def load_head(folder: str | Path) -> Head:
    folder = Path(folder).expanduser()
    missing = [name for name in HEAD_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: no calibrated head here (missing {', '.join(missing)}): "
                        "run `megatron-detox scorer train --out <folder>` or drop --head")
    try:
        meta = json.loads((folder / HEAD_FILES[1]).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / HEAD_FILES[0]))
        spec = FeatureSpec.from_json(meta["features"])
        attributes = tuple(str(a) for a in meta["attributes"])
        knots = {a: (tensors[f"calibration.{a}.x"], tensors[f"calibration.{a}.y"]) for a in attributes}
        weight, bias = tensors["weight"], tensors["bias"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise UserError(f"{folder}: unreadable calibrated head ({type(error).__name__}: {error})") from None
    if weight.shape != (len(attributes), spec.num_features) or bias.shape != (len(attributes),):
        raise UserError(f"{folder}: head weight {weight.shape} does not match {len(attributes)} attributes "
                        f"x {spec.num_features} features")
    return Head(spec, attributes, weight, bias, knots, meta)


def fit_attribute(
    features: sp.csr_matrix, targets: np.ndarray, calib_features: sp.csr_matrix, calib_targets: np.ndarray,
    alpha: float,
) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]]:
    """Ridge on logit targets, weights rounded to float16, isotonic knots on the calibration rows."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-4).fit(features, logit(targets))
    weight = model.coef_.astype(np.float16)
    bias = float(model.intercept_)
    calib_logits = np.asarray(calib_features @ weight.astype(np.float32), dtype=np.float64) + bias
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(calib_logits, calib_targets)
    return weight, bias, (np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64))


def fit_head(
    spec: FeatureSpec,
    attributes: Sequence[str],
    train: tuple[sp.csr_matrix, list[dict[str, float]]],
    calibration: tuple[sp.csr_matrix, list[dict[str, float]]],
    alpha: float,
) -> Head:
    """One ridge + isotonic map per attribute, each on the rows that have that attribute."""
    weights, biases, knots = [], [], {}
    for attribute in attributes:
        rows = [i for i, scores in enumerate(train[1]) if attribute in scores]
        calib_rows = [i for i, scores in enumerate(calibration[1]) if attribute in scores]
        if not rows or not calib_rows:
            raise UserError(f"no training or calibration texts carry {attribute!r}: drop it from --attributes")
        weight, bias, knot = fit_attribute(
            train[0][rows], np.array([train[1][i][attribute] for i in rows]),
            calibration[0][calib_rows], np.array([calibration[1][i][attribute] for i in calib_rows]), alpha,
        )
        weights.append(weight)
        biases.append(bias)
        knots[attribute] = knot
    return Head(spec, tuple(attributes), np.stack(weights), np.array(biases, np.float32), knots)
