"""The fitted preprocessing of a table: which feature columns, of which kind, with which statistics.

A :class:`TabularSchema` is plain JSON (column lists, medians, clip bounds, means, standard
deviations, quantile edges, category vocabularies), fitted on the training split only. It
travels in the backbone's ``export_spec`` and its statistics become buffers
(:mod:`core.tabular.inputs`), so a saved model preprocesses exactly as in training, no pickle.

Numeric columns: median imputation + a missing indicator + clipping of data-entry outliers
(an age of 65526: beyond one span of the training 0.5-99.5 % quantiles past them; ``inf`` /
``-inf`` land on the upper / lower bound) + log1p for skewed non-negative columns +
standardisation + quantile bins.
Categorical columns: a vocabulary with two reserved codes, 0 = unknown (unseen or rare at fit
time, so that embedding is trained) and 1 = missing.

A column is numeric when its values parse as numbers. One whose values are mostly numbers
with a few stray words (``'abc'``, ``'n/a'``) is an error naming column, row and value, unless
it is declared ``categorical`` or listed in ``coerce`` (stray values then count as missing, with
a warning giving their number, at fit and at predict time).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from core.errors import ConfigError, DataError

from .read import file_row

if TYPE_CHECKING:
    import pandas as pd

UNKNOWN, MISSING = 0, 1  # reserved category codes
RESERVED = 2
#: a non-declared column whose non-empty values are at least this fraction numbers is numeric
#: with stray values (an error), not categorical
NUMERIC_MAJORITY = 0.8
#: a numeric value is an outlier (clipped) beyond this many quantile spans past the clip quantiles
CLIP_MARGIN = 1.0


@dataclass
class NumericColumn:
    name: str
    median: float
    lo: float  # clip bounds: the training range, cut one quantile span past the 0.5 / 99.5 % quantiles
    hi: float
    mean: float  # of the clipped (and log1p-transformed, if ``log``) values
    std: float
    log: bool = False  # log1p after clipping: heavy-tailed non-negative values (TSH spans 0.005-500)
    edges: list[float] = field(default_factory=list)  # training quantiles for the piecewise-linear encoding
    # training mean of each bin, subtracted so the bins are centred like the other inputs (a linear
    # target then trains in 1.1x a ridge's error instead of 1.2-1.3x); models saved without it: none
    bin_means: list[float] = field(default_factory=list)
    coerce: bool = False  # non-numeric values count as missing instead of raising


@dataclass
class CategoricalColumn:
    name: str
    vocab: list[str]  # code = RESERVED + position


@dataclass
class TabularSchema:
    """The fitted preprocessing of a table."""

    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> TabularSchema:
        try:
            return cls(
                numeric=[NumericColumn(**c) for c in spec.get("numeric", [])],
                categorical=[CategoricalColumn(**c) for c in spec.get("categorical", [])],
            )
        except TypeError as e:
            raise ConfigError(f"malformed tabular schema: {e}") from e

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        columns: Sequence[str],
        categorical: Sequence[str] = (),
        numeric: Sequence[str] = (),
        min_category_count: int = 5,
        clip_quantile: float = 0.005,
        log_skewness: float = 2.0,
        bins: int = 16,
        coerce: Sequence[str] = (),
        source: str = "<table>",
    ) -> TabularSchema:
        """Fit on the training rows only. Columns are numeric when their values parse as numbers,
        unless listed in ``categorical`` / ``numeric``. Non-negative numeric columns whose skewness
        exceeds ``log_skewness`` are log1p-transformed. ``bins`` quantile bins per numeric column
        feed the piecewise-linear encoding (0 = none). ``coerce`` columns read stray words as missing."""
        check_columns(frame, columns, source)
        both = sorted(set(categorical) & set(numeric))
        if both:
            raise ConfigError(f"columns {both} are declared both categorical and numeric")
        undeclared = sorted(set(coerce) - set(columns))
        if undeclared:
            raise ConfigError(f"coerce names {undeclared}, which are not feature columns")
        schema = cls()
        for name in columns:
            col = frame[name]
            declared = name in numeric or name in coerce
            if declared or (name not in categorical and numeric_share(col) >= NUMERIC_MAJORITY):
                schema.numeric.append(
                    _fit_numeric(col, name, source, clip_quantile, log_skewness, bins, coerce=name in coerce)
                )
            else:
                counts = Counter(v for v in as_strings(col) if v is not None)
                vocab = sorted(v for v, n in counts.items() if n >= min_category_count)
                schema.categorical.append(CategoricalColumn(name, vocab))
        return schema

    # -- transforming -------------------------------------------------------------------------
    def encode(self, frame: pd.DataFrame, source: str = "<table>") -> tuple[Tensor, Tensor, dict[str, list[int]]]:
        """Raw numeric values (NaN = missing, inf kept: the model clips it) [N, Cn], category codes
        [N, Cc], and the rows per categorical column whose value was not in the training vocabulary."""
        check_columns(frame, self.columns, source)
        n = len(frame)
        numeric = [parse_numeric(frame[c.name], c.name, source, c.coerce) for c in self.numeric]
        codes, unknown = [], {}
        for c in self.categorical:
            lookup = {v: RESERVED + i for i, v in enumerate(c.vocab)}
            values = as_strings(frame[c.name])
            col = np.array([MISSING if v is None else lookup.get(v, UNKNOWN) for v in values], dtype=np.int64)
            rows = [i for i, (v, code) in enumerate(zip(values, col, strict=True)) if v is not None and code == UNKNOWN]
            if rows:
                unknown[c.name] = rows
            codes.append(col)
        return (
            torch.from_numpy(np.stack(numeric, 1).astype(np.float32)) if numeric else torch.zeros(n, 0),
            torch.from_numpy(np.stack(codes, 1)) if codes else torch.zeros(n, 0, dtype=torch.long),
            unknown,
        )


def _fit_numeric(
    col: pd.Series,
    name: str,
    source: str,
    clip_quantile: float,
    log_skewness: float,
    bins: int,
    coerce: bool,
) -> NumericColumn:
    values = parse_numeric(col, name, source, coerce)
    seen = values[np.isfinite(values)]  # inf is clipped later, never part of the statistics
    if len(seen) == 0:
        raise DataError(f"{source}: numeric column '{name}' has no finite value in the training split; drop it")
    q_lo, q_hi = np.quantile(seen, [clip_quantile, 1 - clip_quantile])
    # the bounds catch data-entry outliers, not the tails: winsorising at the quantiles themselves
    # cut the extreme rows of every column and cost a linear target 1.4-1.6x a ridge's error
    # (scripts/bench_table_linear.py); a value is clipped only beyond one quantile span past them
    # (an age of 65526 among ages 20-90), and never inside the training range when the span is 0
    span = q_hi - q_lo
    margin = CLIP_MARGIN * span if span > 0 else np.inf
    lo, hi = max(q_lo - margin, seen.min()), min(q_hi + margin, seen.max())
    clipped = np.clip(seen, lo, hi)
    edges = np.unique(np.quantile(clipped, np.linspace(0, 1, bins + 1))) if bins else np.zeros(0)
    bin_means = ((clipped[:, None] - edges[:-1]) / np.maximum(np.diff(edges), 1e-12)).clip(0, 1).mean(0)
    log = bool(lo >= 0 and _skewness(clipped) > log_skewness)
    if log:
        clipped = np.log1p(clipped)
    std = float(clipped.std())
    return NumericColumn(
        name,
        float(np.median(seen)),
        float(lo),
        float(hi),
        float(clipped.mean()),
        std or 1.0,
        log,
        edges.tolist(),
        bin_means.tolist(),
        coerce,
    )


def _skewness(x: np.ndarray) -> float:
    std = x.std()
    return float(((x - x.mean()) ** 3).mean() / std**3) if std > 0 else 0.0


def check_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing feature column(s) {missing}; the model needs {list(columns)} "
            f"(the file has {list(frame.columns)})"
        )


def as_strings(col: pd.Series) -> list[str | None]:
    """Category values as strings, None where empty; 1 and 1.0 read from CSV are the same category."""
    out: list[str | None] = []
    for v in col.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            out.append(None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return out


def _blank(col: pd.Series) -> pd.Series:
    return col.isna() | col.astype(str).str.strip().eq("")


def numeric_share(col: pd.Series) -> float:
    """The fraction of non-empty values that parse as numbers (booleans count as words)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        return 0.0
    if pd.api.types.is_numeric_dtype(col):
        return 1.0
    present = col[~_blank(col)]
    if not len(present):
        return 0.0
    return float(pd.to_numeric(present.astype(str).str.strip(), errors="coerce").notna().mean())


def parse_numeric(col: pd.Series, name: str, source: str, coerce: bool = False) -> np.ndarray:
    """float64 values, NaN where empty (inf kept); a non-numeric value is an error naming column,
    row and file, or with ``coerce`` a missing value (their count is warned)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    blank = _blank(col)
    parsed = pd.to_numeric(col.where(~blank).astype(object), errors="coerce")
    bad = (parsed.isna() & ~blank).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if not coerce:
            raise DataError(
                f"{source}: numeric column '{name}' has the non-numeric value {col.iloc[row]!r} at "
                f"{file_row(col.index, row)} "
                f"({int(bad.sum())} such row(s)); fix the value, leave it empty (missing), declare '{name}' "
                f"categorical, or list it in 'coerce' to read such values as missing"
            )
        warnings.warn(
            f"{source}: numeric column '{name}': {int(bad.sum())} non-numeric value(s) read as missing "
            f"(first: {col.iloc[row]!r} at {file_row(col.index, row)})",
            stacklevel=3,
        )
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


def warn_unknown(unknown: dict[str, list[int]], source: str) -> None:
    for name, rows in unknown.items():
        shown = ", ".join(map(str, rows[:5])) + (" ..." if len(rows) > 5 else "")
        warnings.warn(
            f"{source}: column '{name}': {len(rows)} value(s) unseen in training mapped to the unknown "
            f"category (rows {shown})",
            stacklevel=3,
        )
