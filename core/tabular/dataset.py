"""The ``table`` dataset: any CSV / Parquet / JSON-lines file of numeric and categorical features,
labelling any core task type (empty cells = unknown).

The preprocessing (:class:`~core.tabular.schema.TabularSchema`) and every statistic a task
takes from its labels (class counts, regression scale) are fitted on the training split only.
Splits are seeded fractions (rows sharing ``id_column`` stay together) or a ``split_column``.
The model remembers the schema, so ``jointtrain predict RUN rows.csv`` reads new rows the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError
from core.task import Task

from .labels import label_columns, read_labels
from .preparation import TablePreparation, read_preparation
from .read import read_table
from .schema import TabularSchema
from .split import split_from_column, split_rows

if TYPE_CHECKING:
    import pandas as pd


class TableDataset(Dataset):
    """Samples ``{"inputs": {"numeric", "categorical"}, task: label, ...}`` of some rows of a table."""

    def __init__(
        self,
        numeric: Tensor,
        categorical: Tensor,
        labels: dict[str, Tensor],
        owners: dict[str, type[Task]],
        rows: Sequence[int] | None = None,
        source: str = "<table>",
    ) -> None:
        self.numeric, self.categorical, self.labels, self.owners = numeric, categorical, labels, owners
        self.rows = list(rows) if rows is not None else list(range(len(numeric)))
        self.source = source

    def __len__(self) -> int:
        return len(self.numeric)

    def inputs(self, index: int) -> dict[str, Tensor]:
        return {"numeric": self.numeric[index], "categorical": self.categorical[index]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"inputs": self.inputs(index), **{t: y[index] for t, y in self.labels.items()}}

    def labelled_counts(self) -> dict[str, int]:
        return {t: int(self.owners[t].labelled_rows(y.numpy()).sum()) for t, y in self.labels.items()}


@dataclass
class PreparedTable:
    """A table read, split and encoded: what a table-based dataset builds its sources from."""

    schema: TabularSchema
    numeric: Tensor  # [N, Cn] raw values, NaN = missing
    categorical: Tensor  # [N, Cc] codes
    labels: dict[str, np.ndarray]  # task -> encoded values of every row
    owners: dict[str, type[Task]]  # task -> the class owning its label semantics
    split: np.ndarray  # per row: train / val / test
    task_updates: dict[str, dict[str, Any]]  # type + what the labels imply, training statistics included
    task_sizes: dict[str, int]  # labelled training rows per task

    def dataset(self, rows: np.ndarray, tasks: Sequence[str], source: str) -> TableDataset:
        labels = {t: torch.from_numpy(self.labels[t][rows]) for t in tasks}
        owners = {t: self.owners[t] for t in tasks}
        return TableDataset(self.numeric[rows], self.categorical[rows], labels, owners, rows.tolist(), source)

    def labelled_in(self, rows: np.ndarray) -> list[str]:
        """Tasks with at least one label among ``rows``."""
        return [t for t, y in self.labels.items() if self.owners[t].labelled_rows(y[rows]).any()]


def prepare_table(
    frame: pd.DataFrame,
    labels: Mapping[str, str | Mapping[str, Any]],
    source: str = "<table>",
    preparation: TablePreparation = TablePreparation(),
    reserved: Sequence[str] = (),
) -> PreparedTable:
    """Read labels through their task types, split, fit the schema on training rows, encode all rows.

    ``preparation.features`` defaults to every column that is not a label, id, split or ``reserved`` one.
    """
    p = preparation
    id_column, split_column, features = p.id_column, p.split_column, p.features
    specs = label_columns(labels)
    for column in (id_column, split_column):
        if column is not None and column not in frame.columns:
            raise DataError(f"{source}: column '{column}' is missing (the file has {list(frame.columns)})")
    taken = {c for s in specs for c in s.columns} | {id_column, split_column, *reserved} - {None}
    if features is None:
        features = [c for c in frame.columns if c not in taken]
    clash = sorted(set(features) & taken)
    if clash:
        raise ConfigError(f"columns {clash} are labels, ids or splits and cannot also be features")
    if not features:
        raise ConfigError(f"{source}: no feature column is left beside the labels")
    encoded = {s.task: read_labels(frame, s, source) for s in specs}
    if split_column is not None:
        split = split_from_column(frame[split_column], split_column, source)
    else:
        ids = frame[id_column].to_numpy() if id_column else None
        split = split_rows(len(frame), p.seed, p.val_fraction, p.test_fraction, ids)
    train = np.flatnonzero(split == "train")
    owners = {s.task: s.owner for s in specs}
    updates, sizes = {}, {}
    for s in specs:
        values = encoded[s.task].values
        sizes[s.task] = int(s.owner.labelled_rows(values[train]).sum())
        if sizes[s.task] == 0:
            raise DataError(
                f"{source}: task '{s.task}' (column(s) {s.columns}) has no label in the training split "
                f"({len(train)} training rows); label some rows or drop the task"
            )
        updates[s.task] = {"type": s.type, **encoded[s.task].updates, **s.owner.train_updates(values[train])}
    schema = TabularSchema.fit(
        frame.iloc[train],
        features,
        p.categorical,
        p.numeric,
        p.min_category_count,
        bins=p.numeric_bins,
        coerce=p.coerce,
        source=f"{source} (training split)",
    )
    # values unseen (or rarer than min_category_count) in training map to the unknown category
    num, cat, _ = schema.encode(frame, source)
    return PreparedTable(schema, num, cat, {t: e.values for t, e in encoded.items()}, owners, split, updates, sizes)


def table_bundle(
    frame: pd.DataFrame,
    labels: Mapping[str, str | Mapping[str, Any]],
    source: str = "<table>",
    preparation: TablePreparation = TablePreparation(),
) -> DataBundle:
    """One shared source per split labelling every task."""
    table = prepare_table(frame, labels, source, preparation)

    def sources(part: str) -> list[Source]:
        rows = np.flatnonzero(table.split == part)
        tasks = table.labelled_in(rows) if len(rows) else []
        return [Source("table", table.dataset(rows, tasks, source), tasks)] if tasks else []

    return DataBundle(
        train=sources("train"),
        val=sources("val"),
        test=sources("test"),
        task_sizes=table.task_sizes,
        extra={"predictor": "table", "id_column": preparation.id_column},
        task_updates=table.task_updates,
        backbone_updates={"schema": table.schema.to_json()},
    )


@DATASETS.register("table")
def table(path: str, labels: dict[str, Any], **options: Any) -> DataBundle:
    """A table file (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``; absolute or relative to the
    working directory) with the tasks of ``labels``.

    Args:
        labels: ``{task: type}`` or ``{task: {type, column | columns, **options}}`` (see ``core.tabular.labels``).
        options: the preparation (:class:`~core.tabular.preparation.TablePreparation`): features,
            categorical / numeric, coerce, id_column, split_column, val_fraction / test_fraction, seed,
            min_category_count, numeric_bins.
    """
    return table_bundle(read_table(path), labels, str(path), read_preparation(options))
