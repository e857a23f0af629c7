"""Patient records as training data: a table of features, one label column per disease
(1 / 0 / empty = unknown), optionally a column of image paths, optionally a cohort column.

Splits are by patient (``id_column``; several rows of one patient stay together) and seeded.
The tabular preprocessing is fitted on the training split only and handed to the backbone;
each disease's training label counts go to its task (for ``pos_weight: auto``).

Regimes: without ``cohort_column`` one shared source labels every disease; with it, each
cohort is its own source labelling the diseases it has labels for (cohorts labelled for
different diseases, as when records come from several studies).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError

from .imaging import check_channels, load_image
from .tabular import TabularSchema


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"records file {path} does not exist")
    try:
        return pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is not a readable CSV: {e}") from e


def parse_labels(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """float32 labels: 1, 0, NaN (empty = unknown). Accepts 1/0, 1.0/0.0, true/false."""
    if column not in frame.columns:
        raise DataError(f"{source}: disease label column '{column}' is missing (the file has {list(frame.columns)})")
    raw = frame[column]
    text = raw.astype(str).str.strip().str.lower()
    values = np.full(len(raw), np.nan, dtype=np.float32)
    values[text.isin(["1", "1.0", "true"]).to_numpy()] = 1.0
    values[text.isin(["0", "0.0", "false"]).to_numpy()] = 0.0
    unknown = (raw.isna() | text.eq("")).to_numpy()
    bad = np.isnan(values) & ~unknown
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: disease column '{column}' has the label {raw.iloc[row]!r} at row {row} "
            f"({int(bad.sum())} such row(s)); labels must be 1, 0 or empty (unknown)"
        )
    return values


def split_patients(ids: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Per-row split name ('train' / 'val' / 'test'), assigning whole patients to one split."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    patients, inverse = np.unique(ids.astype(str), return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(patients))
    n_val, n_test = round(len(patients) * val_fraction), round(len(patients) * test_fraction)
    which = np.full(len(patients), "train", dtype=object)
    which[perm[:n_val]] = "val"
    which[perm[n_val : n_val + n_test]] = "test"
    return which[inverse]


class RecordsDataset(Dataset):
    """Samples ``{"inputs": {"numeric", "categorical"[, "image", "image_present"]}, disease: label, ...}``."""

    def __init__(
        self,
        numeric: Tensor,
        categorical: Tensor,
        labels: dict[str, Tensor],
        images: list[str | None] | None = None,
        image_size: int = 64,
        image_channels: int = 3,
        strict_images: bool = False,
        rows: Sequence[int] | None = None,
        source: str = "<table>",
    ) -> None:
        self.numeric, self.categorical, self.labels = numeric, categorical, labels
        self.images, self.image_size, self.image_channels = images, image_size, image_channels
        self.strict_images, self.source = strict_images, source
        self.rows = list(rows) if rows is not None else list(range(len(numeric)))

    def __len__(self) -> int:
        return len(self.numeric)

    def __getitem__(self, index: int) -> dict[str, Any]:
        inputs: dict[str, Tensor] = {"numeric": self.numeric[index], "categorical": self.categorical[index]}
        if self.images is not None:
            where = f"{self.source} row {self.rows[index]}: "
            image = load_image(self.images[index], self.image_size, self.image_channels, self.strict_images, where)
            inputs["image_present"] = torch.tensor(image is not None)
            blank = torch.zeros(self.image_channels, self.image_size, self.image_size, dtype=torch.uint8)
            inputs["image"] = image if image is not None else blank
        return {"inputs": inputs, **{d: y[index] for d, y in self.labels.items()}}

    def labelled_counts(self) -> dict[str, int]:
        return {d: int((~torch.isnan(y)).sum()) for d, y in self.labels.items()}


def image_paths(
    frame: pd.DataFrame, column: str, root: Path, source: str, strict: bool
) -> tuple[list[str | None], list[int]]:
    """Absolute paths (None where empty) and the rows whose file does not exist (missing modality)."""
    if column not in frame.columns:
        raise DataError(f"{source}: image column '{column}' is missing (the file has {list(frame.columns)})")
    paths: list[str | None] = []
    absent: list[int] = []
    for row, value in enumerate(frame[column].tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            paths.append(None)
            continue
        path = Path(str(value).strip())
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            absent.append(row)
            paths.append(None)
        else:
            paths.append(str(path))
    if absent:
        shown = ", ".join(f"row {r}: {frame[column].iloc[r]}" for r in absent[:3]) + (" ..." if len(absent) > 3 else "")
        message = f"{source}: {len(absent)} image file(s) in column '{column}' do not exist ({shown})"
        if strict:
            raise DataError(f"{message}; fix the paths or set strict_images=false to treat them as missing images")
        warnings.warn(f"{message}; treated as missing images", stacklevel=3)
    return paths, absent


def records_bundle(
    frame: pd.DataFrame,
    diseases: Sequence[str],
    source: str = "<table>",
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    id_column: str | None = None,
    cohort_column: str | None = None,
    image_column: str | None = None,
    image_root: str | Path | None = None,
    image_size: int = 64,
    image_channels: int = 3,
    strict_images: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    min_category_count: int = 5,
    numeric_bins: int = 16,
) -> DataBundle:
    """Everything the trainer and the saved model need from one table of patient records."""
    diseases = list(diseases)
    if not diseases:
        raise ConfigError("records data needs at least one disease column")
    reserved = {*diseases, id_column, cohort_column, image_column} - {None}
    if features is None:
        features = [c for c in frame.columns if c not in reserved]
    clash = sorted(set(features) & reserved)
    if clash:
        raise ConfigError(f"columns {clash} are used as labels/ids/images and cannot also be features")
    labels = {d: parse_labels(frame, d, source) for d in diseases}
    if id_column is not None and id_column not in frame.columns:
        raise DataError(f"{source}: id column '{id_column}' is missing")
    ids = frame[id_column].to_numpy() if id_column else np.arange(len(frame))
    split = split_patients(ids, seed, val_fraction, test_fraction)
    train_rows = np.flatnonzero(split == "train")
    for d, y in labels.items():
        seen = y[train_rows][~np.isnan(y[train_rows])]
        if seen.sum() == 0:
            raise DataError(
                f"{source}: disease column '{d}' has no positive label in the training split "
                f"({len(seen)} labelled training rows, {int(np.nansum(y))} positives in the whole file); "
                "drop the disease or add positive cases"
            )

    schema = TabularSchema.fit(
        frame.iloc[train_rows],
        features,
        categorical,
        numeric,
        min_category_count,
        bins=numeric_bins,
        source=f"{source} (training split)",
    )
    # values unseen (or rarer than min_category_count) in training map to the unknown category
    num, cat, _ = schema.encode(frame, source)
    paths: list[str | None] | None = None
    if image_column is not None:
        check_channels(image_channels)
        root = Path(image_root) if image_root is not None else Path(source).parent
        paths, _ = image_paths(frame, image_column, root, source, strict_images)
    if cohort_column and cohort_column not in frame.columns:
        raise DataError(f"{source}: cohort column '{cohort_column}' is missing")
    cohorts = frame[cohort_column].astype(str).to_numpy() if cohort_column else np.full(len(frame), "records")

    def sources(part: str) -> list[Source]:
        out = []
        for cohort in sorted(set(cohorts[split == part])):
            rows = np.flatnonzero((split == part) & (cohorts == cohort))
            labelled = [d for d in diseases if not np.isnan(labels[d][rows]).all()]
            if not labelled:
                continue
            dataset = RecordsDataset(
                num[rows],
                cat[rows],
                {d: torch.from_numpy(labels[d][rows]) for d in labelled},
                [paths[r] for r in rows] if paths is not None else None,
                image_size,
                image_channels,
                strict_images,
                rows.tolist(),
                source,
            )
            out.append(Source(cohort if cohort_column else "records", dataset, labelled))
        return out

    counts = {}
    for d in diseases:
        seen = labels[d][train_rows][~np.isnan(labels[d][train_rows])]
        counts[d] = {"positive": int(seen.sum()), "negative": int(len(seen) - seen.sum())}
    backbone_updates: dict[str, Any] = {"schema": schema.to_json()}
    extra: dict[str, Any] = {"predictor": "records", "diseases": diseases, "id_column": id_column}
    if image_column is not None:
        backbone_updates["image_channels"] = image_channels
        extra.update(image_column=image_column, image_size=image_size, image_channels=image_channels)
    return DataBundle(
        train=sources("train"),
        val=sources("val"),
        test=sources("test"),
        task_sizes={d: c["positive"] + c["negative"] for d, c in counts.items()},
        extra=extra,
        task_updates={d: {"label_counts": c} for d, c in counts.items()},
        backbone_updates=backbone_updates,
    )


@DATASETS.register("records")
def records(
    path: str,
    diseases: Sequence[str],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    id_column: str | None = None,
    cohort_column: str | None = None,
    image_column: str | None = None,
    image_root: str | None = None,
    image_size: int = 64,
    image_channels: int = 3,
    strict_images: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    min_category_count: int = 5,
    numeric_bins: int = 16,
) -> DataBundle:
    """A CSV of patient records. ``features`` defaults to every column that is not a label, id,
    cohort or image column; relative image paths are resolved against ``image_root`` (default:
    the CSV's folder)."""
    return records_bundle(
        read_table(path),
        diseases,
        source=str(path),
        features=features,
        categorical=categorical,
        numeric=numeric,
        id_column=id_column,
        cohort_column=cohort_column,
        image_column=image_column,
        image_root=image_root,
        image_size=image_size,
        image_channels=image_channels,
        strict_images=strict_images,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_category_count=min_category_count,
        numeric_bins=numeric_bins,
    )
