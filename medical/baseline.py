"""The strong tabular anchor: one scikit-learn ``HistGradientBoostingClassifier`` per disease,
trained on exactly the rows, features and labels the joint model sees (raw values, NaN kept:
gradient boosting handles missing values and category codes natively).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.data import Source

from .metrics import binary_scores


def table(sources: Sequence[Source], disease: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(features, labels, numeric column count) of the rows of ``sources`` labelled for ``disease``."""
    xs, ys = [], []
    for source in sources:
        if disease not in source.tasks:
            continue
        data = source.dataset
        y = data.labels[disease].numpy()
        keep = ~np.isnan(y)
        xs.append(torch.cat([data.numeric, data.categorical.float()], 1).numpy()[keep])
        ys.append(y[keep])
    n_numeric = sources[0].dataset.numeric.shape[1]
    return np.concatenate(xs), np.concatenate(ys), n_numeric


def gradient_boosting(
    train: Sequence[Source], test: Sequence[Source], diseases: Sequence[str], seed: int = 0, **params: Any
) -> dict[str, dict[str, Any]]:
    """Per-disease test scores (same metrics as the joint model) of HistGradientBoosting."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    report = {}
    for d in diseases:
        x, y, n_numeric = table(train, d)
        # category codes are native categories unless there are more than HGB's 255 bins allow
        categorical = (np.arange(x.shape[1]) >= n_numeric) & (np.nan_to_num(x).max(0) < 255)
        model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed, **params)
        model.fit(x, y.astype(int))
        x_test, y_test, _ = table(test, d)
        report[d] = binary_scores(model.predict_proba(x_test)[:, 1], y_test)
    return report
