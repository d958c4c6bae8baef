"""``train_head``: fit the calibrated scorer's head on the fixed split and record its held-out metrics.

Deterministic: the split is a hash of each group, the features are hashed n-grams,
ridge uses the conjugate-gradient solver from zero and isotonic regression has no
randomness; retraining reproduces the shipped ``head.json`` metrics up to float
rounding (tests/scoring/calibrated/test_train.py checks it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from megatron_detox.scoring.calibrated import data
from megatron_detox.scoring.calibrated.features import FeatureSpec, Featurizer
from megatron_detox.scoring.calibrated.head import Head, fit_head
from megatron_detox.scoring.calibrated.metrics import agreement

HEAD_VERSION = "1"


@dataclass
class TrainSettings:
    alpha: float = 1.0
    """Ridge penalty (chosen on the calibration split, docs/scorers.md)."""
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    attributes: tuple[str, ...] = data.ATTRIBUTES
    exclude_sources: tuple[str, ...] = ()
    """Sources left out of training and calibration (leave-one-source-out runs)."""


@dataclass
class FeaturizedData:
    """The dataset with one feature row per text (computed once, sliced per use)."""

    dataset: data.Dataset
    features: sp.csr_matrix
    featurizer: Featurizer

    def part(self, split: str, sources: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> tuple[sp.csr_matrix, list[data.ScoredText]]:
        index = [i for i, row in enumerate(self.dataset.rows)
                 if row.split == split and (sources is None or row.source in sources) and row.source not in exclude]
        return self.features[index], [self.dataset.rows[i] for i in index]


def featurize(dataset: data.Dataset, spec: FeatureSpec) -> FeaturizedData:
    featurizer = Featurizer(spec)
    return FeaturizedData(dataset, featurizer.transform([row.text for row in dataset.rows]), featurizer)


def fit_on(featurized: FeaturizedData, settings: TrainSettings) -> Head:
    train_x, train_rows = featurized.part("train", exclude=settings.exclude_sources)
    calib_x, calib_rows = featurized.part("calibration", exclude=settings.exclude_sources)
    return fit_head(settings.spec, settings.attributes, (train_x, [r.scores for r in train_rows]),
                    (calib_x, [r.scores for r in calib_rows]), settings.alpha)


def held_out_metrics(head: Head, featurized: FeaturizedData, sources: Sequence[str] | None = None
                     ) -> dict[str, dict[str, Any]]:
    """Per attribute: agreement of the head with Perspective on the test split."""
    test_x, test_rows = featurized.part("test", sources)
    predicted = head.predict(test_x)
    out = {}
    for column, attribute in enumerate(head.attributes):
        rows = [i for i, row in enumerate(test_rows) if attribute in row.scores]
        if rows:
            target = np.array([test_rows[i].scores[attribute] for i in rows])
            out[attribute] = agreement(predicted[rows, column], target)
    return out


def split_summary(dataset: data.Dataset) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for row in dataset.rows:
        counts.setdefault(row.source, {name: 0 for name in data.SPLITS})[row.split] += 1
    return {
        "salt": data.SPLIT_SALT,
        "test_percent": data.TEST_PERCENT,
        "calibration_percent": data.CALIBRATION_PERCENT,
        "reserved": data.RESERVED_GLOB,
        "num_reserved_texts": sum(row.reserved for row in dataset.rows),
        "texts": counts,
    }


def train_head(folder: str | Path, settings: TrainSettings | None = None,
               featurized: FeaturizedData | None = None) -> tuple[Head, FeaturizedData]:
    """Fit on ``folder``'s fixed split; the head's ``meta`` records settings, split and held-out metrics."""
    settings = settings or TrainSettings()
    started = time.perf_counter()
    if featurized is None or featurized.featurizer.spec != settings.spec:
        featurized = featurize(data.load_dataset(folder), settings.spec)
    head = fit_on(featurized, settings)
    head.meta = {
        "name": "calibrated",
        "head_version": HEAD_VERSION,
        "settings": {**asdict(settings), "spec": settings.spec.to_json()},
        "split": split_summary(featurized.dataset),
        "held_out": held_out_metrics(head, featurized),
    }
    head.train_seconds = time.perf_counter() - started  # not in meta: the files stay byte-identical
    return head, featurized
