"""Patient records as training data: core's ``table`` specialised to diseases, cohorts and images.

A table of features, one label column per disease (1 / 0, true / false, yes / no; empty =
unknown), optionally other labels of any core task type (``labels``, as in ``table``), a column
of image paths and a cohort column. Reading, splitting and the
tabular preprocessing are core's (:func:`core.tabular.prepare_table`): splits are by patient
(``id_column``; several rows of one patient stay together) and seeded, the preprocessing and
each disease's label counts (for ``pos_weight: auto``) come from the training split only.

Regimes: without ``cohort_column`` one shared source labels every disease; with it, each
cohort is its own source labelling the diseases it has labels for (cohorts labelled for
different diseases, as when records come from several studies).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError
from core.tabular import TableDataset, TablePreparation, prepare_table, read_table
from core.tabular.preparation import read_preparation

from .imaging import check_channels, load_image


class RecordsDataset(TableDataset):
    """Samples ``{"inputs": {"numeric", "categorical"[, "image", "image_present"]}, disease: label, ...}``."""

    def __init__(
        self,
        table: TableDataset,
        images: list[str | None] | None = None,
        image_size: int = 64,
        image_channels: int = 3,
        strict_images: bool = False,
    ) -> None:
        super().__init__(table.numeric, table.categorical, table.labels, table.owners, table.rows, table.source)
        self.images, self.image_size, self.image_channels = images, image_size, image_channels
        self.strict_images = strict_images

    def inputs(self, index: int) -> dict[str, Tensor]:
        inputs = super().inputs(index)
        if self.images is not None:
            where = f"{self.source} row {self.rows[index]}: "
            image = load_image(self.images[index], self.image_size, self.image_channels, self.strict_images, where)
            inputs["image_present"] = torch.tensor(image is not None)
            blank = torch.zeros(self.image_channels, self.image_size, self.image_size, dtype=torch.uint8)
            inputs["image"] = image if image is not None else blank
        return inputs


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
    labels: Mapping[str, str | Mapping[str, Any]] | None = None,
    cohort_column: str | None = None,
    image_column: str | None = None,
    image_root: str | Path | None = None,
    image_size: int = 64,
    image_channels: int = 3,
    strict_images: bool = False,
    preparation: TablePreparation = TablePreparation(),
) -> DataBundle:
    """Everything the trainer and the saved model need from one table of patient records."""
    diseases = list(diseases)
    if not diseases:
        raise ConfigError("records data needs at least one disease column")
    both = sorted(set(diseases) & set(labels or {}))
    if both:
        raise ConfigError(f"tasks {both} are listed both as diseases and under labels")
    for column in (cohort_column, image_column):
        if column is not None and column not in frame.columns:
            raise DataError(f"{source}: column '{column}' is missing (the file has {list(frame.columns)})")
    table = prepare_table(
        frame,
        {**dict.fromkeys(diseases, "disease"), **(labels or {})},
        source,
        preparation,
        reserved=[c for c in (cohort_column, image_column) if c is not None],
    )
    for d in diseases:
        counts = table.task_updates[d]["label_counts"]
        if counts["positive"] == 0:
            raise DataError(
                f"{source}: disease column '{d}' has no positive label in the training split "
                f"({counts['negative']} labelled training rows, {int(np.nansum(table.labels[d]))} positives in "
                "the whole file); drop the disease or add positive cases"
            )
    paths: list[str | None] | None = None
    if image_column is not None:
        check_channels(image_channels)
        root = Path(image_root) if image_root is not None else Path(source).parent
        paths, _ = image_paths(frame, image_column, root, source, strict_images)
    cohorts = frame[cohort_column].astype(str).to_numpy() if cohort_column else np.full(len(frame), "records")

    def sources(part: str) -> list[Source]:
        out = []
        for cohort in sorted(set(cohorts[table.split == part])):
            rows = np.flatnonzero((table.split == part) & (cohorts == cohort))
            labelled = table.labelled_in(rows)
            if not labelled:
                continue
            dataset = RecordsDataset(
                table.dataset(rows, labelled, source),
                [paths[r] for r in rows] if paths is not None else None,
                image_size,
                image_channels,
                strict_images,
            )
            out.append(Source(cohort if cohort_column else "records", dataset, labelled))
        return out

    backbone_updates: dict[str, Any] = {"schema": table.schema.to_json()}
    extra: dict[str, Any] = {"predictor": "records", "diseases": diseases, "id_column": preparation.id_column}
    if image_column is not None:
        backbone_updates["image_channels"] = image_channels
        extra.update(image_column=image_column, image_size=image_size, image_channels=image_channels)
    return DataBundle(
        train=sources("train"),
        val=sources("val"),
        test=sources("test"),
        task_sizes=table.task_sizes,
        extra=extra,
        task_updates=table.task_updates,
        backbone_updates=backbone_updates,
    )


@DATASETS.register("records")
def records(
    path: str,
    diseases: Sequence[str],
    labels: dict[str, Any] | None = None,
    cohort_column: str | None = None,
    image_column: str | None = None,
    image_root: str | None = None,
    image_size: int = 64,
    image_channels: int = 3,
    strict_images: bool = False,
    **options: Any,
) -> DataBundle:
    """A table file of patient records (CSV, Parquet, JSON lines). ``labels`` adds tasks of any
    core type (``{task: type}`` or ``{task: {type, column, ...}}``, as in ``table``); relative image
    paths are resolved against ``image_root`` (default: the file's folder). ``options`` are the
    table preparation (:class:`~core.tabular.preparation.TablePreparation`, as in ``table``):
    ``features`` defaults to every column that is not a label, id, cohort or image column;
    ``coerce`` lists numeric columns whose stray words are read as missing."""
    return records_bundle(
        read_table(path),
        diseases,
        source=str(path),
        labels=labels,
        cohort_column=cohort_column,
        image_column=image_column,
        image_root=image_root,
        image_size=image_size,
        image_channels=image_channels,
        strict_images=strict_images,
        preparation=read_preparation(options),
    )
