"""Tabular records: per-column preprocessing fitted on the training split, and the encoders.

The fitted :class:`TabularSchema` is plain JSON (column lists, medians, clip bounds, means,
standard deviations, category vocabularies). It travels in the backbone's ``export_spec`` and
its numeric statistics are also buffers, so a saved model applies exactly the training-time
preprocessing at predict time with no pickle.

Numeric columns: median imputation + a missing indicator + winsorising to the training
quantiles (lab values hold data-entry outliers such as an age of 65526) + standardisation.
Categorical columns: a vocabulary with two reserved codes, 0 = unknown (unseen or rare at fit
time, so that embedding is trained) and 1 = missing, each column then an embedding.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from core.errors import ConfigError, DataError
from core.registry import Registry

UNKNOWN, MISSING = 0, 1  # reserved category codes
RESERVED = 2

#: tabular encoders: ``(schema, dim, **kwargs) -> nn.Module`` mapping (numeric, categorical) to [B, dim]
TABULAR_ENCODERS: Registry[nn.Module] = Registry("tabular encoder")


@dataclass
class NumericColumn:
    name: str
    median: float
    lo: float  # clip bounds: training quantiles
    hi: float
    mean: float  # of the winsorised (and log1p-transformed, if ``log``) values
    std: float
    log: bool = False  # log1p after clipping: heavy-tailed non-negative lab values (TSH spans 0.005-500)
    edges: list[float] = field(default_factory=list)  # training quantiles for the piecewise-linear encoding


@dataclass
class CategoricalColumn:
    name: str
    vocab: list[str]  # code = RESERVED + position


@dataclass
class TabularSchema:
    """The fitted preprocessing of a table: which columns, of which kind, with which statistics."""

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
        source: str = "<table>",
    ) -> TabularSchema:
        """Fit on the training rows only. Columns are numeric when every non-empty value parses
        as a number, unless listed in ``categorical`` / ``numeric``. Non-negative numeric columns
        whose skewness exceeds ``log_skewness`` are log1p-transformed. ``bins`` quantile bins per
        numeric column feed the piecewise-linear encoding (0 = none)."""
        check_columns(frame, columns, source)
        schema = cls()
        for name in columns:
            col = frame[name]
            is_numeric = name in numeric or (name not in categorical and _parses_as_numbers(col))
            if is_numeric:
                values = parse_numeric(col, name, source)
                seen = values[~np.isnan(values)]
                if len(seen) == 0:
                    raise DataError(f"{source}: numeric column '{name}' is empty in the training split; drop it")
                lo, hi = np.quantile(seen, [clip_quantile, 1 - clip_quantile])
                clipped = np.clip(seen, lo, hi)
                edges = np.unique(np.quantile(clipped, np.linspace(0, 1, bins + 1))).tolist() if bins else []
                log = bool(lo >= 0 and _skewness(clipped) > log_skewness)
                if log:
                    clipped = np.log1p(clipped)
                std = float(clipped.std())
                schema.numeric.append(
                    NumericColumn(
                        name,
                        float(np.median(seen)),
                        float(lo),
                        float(hi),
                        float(clipped.mean()),
                        std or 1.0,
                        log,
                        edges,
                    )
                )
            else:
                counts = Counter(v for v in _as_strings(col) if v is not None)
                vocab = sorted(v for v, n in counts.items() if n >= min_category_count)
                schema.categorical.append(CategoricalColumn(name, vocab))
        return schema

    # -- transforming -------------------------------------------------------------------------
    def encode(self, frame: pd.DataFrame, source: str = "<table>") -> tuple[Tensor, Tensor, dict[str, list[int]]]:
        """Raw numeric values (NaN = missing) [N, Cn], category codes [N, Cc], and the rows per
        categorical column whose value was not in the training vocabulary (mapped to unknown)."""
        check_columns(frame, self.columns, source)
        numeric = np.stack([parse_numeric(frame[c.name], c.name, source) for c in self.numeric], 1)
        codes, unknown = [], {}
        for c in self.categorical:
            lookup = {v: RESERVED + i for i, v in enumerate(c.vocab)}
            values = _as_strings(frame[c.name])
            col = np.array([MISSING if v is None else lookup.get(v, UNKNOWN) for v in values], dtype=np.int64)
            rows = [i for i, (v, code) in enumerate(zip(values, col, strict=True)) if v is not None and code == UNKNOWN]
            if rows:
                unknown[c.name] = rows
            codes.append(col)
        n = len(frame)
        return (
            torch.from_numpy(numeric.astype(np.float32)) if self.numeric else torch.zeros(n, 0),
            torch.from_numpy(np.stack(codes, 1)) if codes else torch.zeros(n, 0, dtype=torch.long),
            unknown,
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


def _as_strings(col: pd.Series) -> list[str | None]:
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


def _parses_as_numbers(col: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    present = col.dropna()
    return bool(len(present)) and bool(pd.to_numeric(present, errors="coerce").notna().all())


def parse_numeric(col: pd.Series, name: str, source: str) -> np.ndarray:
    """float64 values, NaN where empty; a non-numeric value is an error naming column, row and file."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    blank = col.isna() | col.astype(str).str.strip().eq("")
    parsed = pd.to_numeric(col.where(~blank), errors="coerce")
    bad = parsed.isna() & ~blank
    if bool(bad.any()):
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: numeric column '{name}' has the non-numeric value {col.iloc[row]!r} at row {row} "
            f"({int(bad.sum())} such row(s)); fix the value, leave it empty (missing) or declare '{name}' categorical"
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


class TabularInputs(nn.Module):
    """Numeric imputation/indicator/winsorising/standardisation as buffers, and category embeddings."""

    def __init__(self, schema: TabularSchema, embedding_dim: int) -> None:
        super().__init__()
        self.schema = schema
        stats = torch.tensor(
            [[c.median, c.lo, c.hi, c.mean, c.std, c.log] for c in schema.numeric], dtype=torch.float32
        ).reshape(-1, 6)
        for i, key in enumerate(("median", "lo", "hi", "mean", "std")):
            self.register_buffer(key, stats[:, i].clone())
        self.register_buffer("log", stats[:, 5].bool())
        # piecewise-linear encoding (Gorishniy et al. 2022): bin t of a value is 0 below it, 1 above
        # it, linear inside; lets an MLP express the lab-value thresholds that trees find easily
        self.n_bins = max((max(len(c.edges) - 1, 0) for c in schema.numeric), default=0)
        left = torch.zeros(len(schema.numeric), self.n_bins)
        width = torch.ones(len(schema.numeric), self.n_bins)
        valid = torch.zeros(len(schema.numeric), self.n_bins)
        for i, c in enumerate(schema.numeric):
            e = torch.tensor(c.edges, dtype=torch.float32)
            k = len(c.edges) - 1
            if k > 0:
                left[i, :k], width[i, :k], valid[i, :k] = e[:-1], (e[1:] - e[:-1]).clamp_min(1e-12), 1.0
        self.register_buffer("bin_left", left)
        self.register_buffer("bin_width", width)
        self.register_buffer("bin_valid", valid)
        sizes = [RESERVED + len(c.vocab) for c in schema.categorical]
        offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()] if sizes else [], dtype=torch.long)
        self.register_buffer("offsets", offsets)
        self.embedding = nn.Embedding(max(sum(sizes), 1), embedding_dim)
        self.n_numeric, self.n_categorical, self.embedding_dim = len(schema.numeric), len(sizes), embedding_dim

    def numeric(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Standardised values [B, Cn], missing indicators [B, Cn], piecewise-linear bins [B, Cn, n_bins]."""
        x = x.float()
        missing = torch.isnan(x)
        x = torch.where(missing, self.median, x)
        x = torch.minimum(torch.maximum(x, self.lo), self.hi)
        bins = ((x.unsqueeze(-1) - self.bin_left) / self.bin_width).clamp(0, 1) * self.bin_valid
        x = torch.where(self.log, torch.log1p(x.clamp_min(0)), x)
        return (x - self.mean) / self.std, missing.float(), bins

    def categorical(self, codes: Tensor) -> Tensor:
        """Embeddings [B, Cc, embedding_dim]."""
        return self.embedding(codes.long() + self.offsets)


class Residual(nn.Module):
    """``x + block(x)``: one residual block as a module of its own (the unit the architectures copy)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@TABULAR_ENCODERS.register("mlp")
class ResidualMLP(nn.Module):
    """Flattened inputs -> Linear -> residual blocks (LayerNorm, Linear, GELU, Dropout, Linear).

    Args:
        depth: residual blocks.
        expansion: hidden width of a block as a multiple of ``dim``.
        dropout: inside each block and on the input projection.
        embedding_dim: width of each categorical column's embedding.
    """

    def __init__(
        self, schema: TabularSchema, dim: int, depth: int = 2, expansion: int = 2, dropout: float = 0.1,
        embedding_dim: int = 8,
    ) -> None:  # fmt: skip
        super().__init__()
        self.inputs = TabularInputs(schema, embedding_dim)
        in_dim = (2 + self.inputs.n_bins) * self.inputs.n_numeric + self.inputs.n_categorical * embedding_dim
        self.stem = nn.Sequential(nn.Linear(in_dim, dim), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, dim * expansion),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(dim * expansion, dim),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = self.embed(numeric, categorical)
        for block in self.blocks:
            x = x + block(x)
        return self.finish(x)

    # -- blocks, for the sharing architectures (medical.fusion.RecordsBackbone exposes them) ----
    def embed(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        values, missing, bins = self.inputs.numeric(numeric)
        x = torch.cat([values, missing, bins.flatten(1), self.inputs.categorical(categorical).flatten(1)], 1)
        return self.stem(x)

    def block(self, index: int) -> nn.Module:
        return Residual(self.blocks[index])

    def block_dims(self) -> list[int]:
        return [self.norm.normalized_shape[0]] * len(self.blocks)

    def finish(self, x: Tensor) -> Tensor:
        return self.norm(x)


@TABULAR_ENCODERS.register("ft_transformer")
class FeatureTokenizer(nn.Module):
    """FT-Transformer style (Gorishniy et al. 2021): one token per column, a CLS token, attention.

    Numeric token = value * w_j + b_j (+ a learned "missing" vector where the value was
    missing); categorical token = its embedding. The CLS token's output is the feature.
    """

    def __init__(self, schema: TabularSchema, dim: int, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"ft_transformer: dim={dim} must be divisible by heads={heads}")
        self.inputs = TabularInputs(schema, dim)
        n = self.inputs.n_numeric
        self.weight = nn.Parameter(torch.randn(n, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(n, dim))
        self.missing = nn.Parameter(torch.zeros(n, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        return self.finish(self.transformer(self.embed(numeric, categorical)))

    # -- blocks, for the sharing architectures (medical.fusion.RecordsBackbone exposes them) ----
    def embed(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        values, missing, _ = self.inputs.numeric(numeric)
        num_tokens = values.unsqueeze(-1) * self.weight + self.bias + missing.unsqueeze(-1) * self.missing
        tokens = [self.cls.expand(len(values), -1, -1), num_tokens, self.inputs.categorical(categorical)]
        return torch.cat(tokens, 1)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.layers

    def block(self, index: int) -> nn.Module:
        return self.transformer.layers[index]

    def block_dims(self) -> list[int]:
        return [self.norm.normalized_shape[0]] * len(self.transformer.layers)

    def finish(self, tokens: Tensor) -> Tensor:
        return self.norm(tokens[:, 0])
