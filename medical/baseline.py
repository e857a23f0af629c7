"""The strong tabular anchor: one scikit-learn ``HistGradientBoostingClassifier`` per disease,
trained on exactly the rows, features and labels the joint model sees (raw values, NaN kept:
gradient boosting handles missing values and category codes natively), its hyperparameters
chosen per disease on the validation split (a baseline is tuned before it is compared).
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


#: the validation grid: sklearn's defaults (100 iterations, lr 0.1, 31 leaves) and slower, longer fits
GRID = {"max_iter": [100, 300], "learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]}


def gradient_boosting(
    train: Sequence[Source],
    val: Sequence[Source],
    test: Sequence[Source],
    diseases: Sequence[str],
    seed: int = 0,
    grid: dict[str, list[Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-disease test scores (same metrics as the joint model) of HistGradientBoosting whose
    hyperparameters maximise validation AUPRC over ``grid``; the test split is scored once."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import ParameterGrid

    report = {}
    for d in diseases:
        x, y, n_numeric = table(train, d)
        x_val, y_val, _ = table(val, d)
        # category codes are native categories unless there are more than HGB's 255 bins allow
        categorical = (np.arange(x.shape[1]) >= n_numeric) & (np.nan_to_num(x).max(0) < 255)

        fits = [
            HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed, **p).fit(
                x, y.astype(int)
            )
            for p in ParameterGrid(grid or GRID)
        ]
        scores = [binary_scores(m.predict_proba(x_val)[:, 1], y_val)["auprc"] for m in fits]
        best = fits[int(np.argmax(scores))]  # the first of equal scores: the grid's simpler settings
        x_test, y_test, _ = table(test, d)
        params = {k: best.get_params()[k] for k in (grid or GRID)}
        report[d] = {**binary_scores(best.predict_proba(x_test)[:, 1], y_test), "params": params}
    return report
