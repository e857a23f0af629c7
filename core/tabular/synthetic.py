"""A generated near-linear regression table (dataset ``near_linear``): a model of the table path's
known-answer case, where a linear model on the raw features is almost exact.

Like a molecular property table: each row is a molecule described by atom and ring counts
(non-negative, skewed integers: the rare ones are log-transformed and clipped by the table's
preprocessing), a few continuous descriptors and a categorical class; each target is additive
in them (an energy is a sum of per-atom contributions), with its own offset and scale and a little
noise (a ridge regression reaches Pearson ~0.9998), and half of the targets have 30 % of their
labels hidden. ``scripts/bench_table_linear.py`` compares the ``table`` path with a ridge tuned on
the validation split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.data import DATASETS, DataBundle

from .dataset import table_bundle
from .preparation import TablePreparation

if TYPE_CHECKING:
    import pandas as pd

#: atom / ring counts and their Poisson means: the rare ones are the skewed columns
COUNTS = {"c": 7.0, "h": 9.0, "n": 1.0, "o": 1.5, "s": 0.2, "f": 0.3, "cl": 0.15, "rings": 1.0}
DESCRIPTORS = ("charge_spread", "dipole_guess", "polarity", "volume_ratio")
CLASSES = ("acyclic", "aromatic", "aliphatic")


def near_linear_frame(
    rows: int = 4000, targets: int = 12, hidden: float = 0.3, noise: float = 0.02, seed: int = 0
) -> pd.DataFrame:
    """Features and ``targets`` columns ``y0``..; the odd-numbered targets have a ``hidden`` fraction
    of labels empty; each target's noise standard deviation is ``noise`` times its signal's."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"molecule": [f"m{i:05d}" for i in range(rows)]})
    for name, mean in COUNTS.items():
        frame[name] = rng.poisson(mean, rows) + (name == "c")  # at least one carbon
    for name in DESCRIPTORS:
        frame[name] = rng.normal(0, 1, rows).round(4)
    frame["kind"] = rng.choice(CLASSES, rows, p=[0.5, 0.3, 0.2])
    features = frame[[*COUNTS, *DESCRIPTORS]].to_numpy(np.float64)
    kind = np.stack([frame["kind"].eq(c).to_numpy(np.float64) for c in CLASSES], 1)
    for k in range(targets):
        weights = rng.normal(0, 1, features.shape[1]) * rng.choice([1.0, 10.0, 40.0])  # per-target units
        signal = features @ weights + kind @ rng.normal(0, 2, len(CLASSES)) + rng.normal(0, 300)
        y = signal + rng.normal(0, noise * signal.std(), rows)
        if k % 2:
            y[rng.random(rows) < hidden] = np.nan
        frame[f"y{k}"] = y.round(4)
    return frame


@DATASETS.register("near_linear")
def near_linear(
    rows: int = 4000,
    targets: int = 12,
    hidden: float = 0.3,
    noise: float = 0.02,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    numeric_bins: int = 16,
) -> DataBundle:
    """The generated table (see :func:`near_linear_frame`) with one regression task per target
    ``y0``..; the split is seeded by ``seed`` too."""
    frame = near_linear_frame(rows, targets, hidden, noise, seed)
    return table_bundle(
        frame,
        {f"y{k}": "regression" for k in range(targets)},
        f"<near_linear rows={rows} seed={seed}>",
        TablePreparation(
            id_column="molecule",
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            numeric_bins=numeric_bins,
        ),
    )
