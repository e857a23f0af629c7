"""Train / validation / test assignment of table rows: seeded fractions (rows sharing an id stay
together) or a column naming each row's split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError, DataError

from .read import file_row

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_rows(
    n: int, seed: int, val_fraction: float, test_fraction: float, ids: np.ndarray | None = None
) -> np.ndarray:
    """Per-row split name; with ``ids``, whole groups (a patient's visits) go to one split."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    groups, inverse = np.unique(ids.astype(str), return_inverse=True) if ids is not None else (np.arange(n), None)
    perm = np.random.default_rng(seed).permutation(len(groups))
    n_val, n_test = round(len(groups) * val_fraction), round(len(groups) * test_fraction)
    which = np.full(len(groups), "train", dtype=object)
    which[perm[:n_val]] = "val"
    which[perm[n_val : n_val + n_test]] = "test"
    return which[inverse] if inverse is not None else which


def split_from_column(col: pd.Series, column: str, source: str) -> np.ndarray:
    """Split names read from a column (train / val / validation / test, any case)."""
    text = col.astype(str).str.strip().str.lower()
    mapped = text.map(_ALIASES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: split column '{column}' has the value {col.iloc[row]!r} at {file_row(col.index, row)} "
            f"({int(bad.sum())} such row(s)); use train, val or test"
        )
    return mapped.to_numpy(dtype=object)
