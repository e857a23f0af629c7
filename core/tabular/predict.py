"""``jointtrain predict RUN rows.csv`` (and ``model.predict(frame)``) for any model whose backbone
carries a tabular schema: one record per row, ``{"row", "id"?, task: prediction}`` (the per-type
schema of ``core.tasks``)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.data import Source
from core.errors import DataError
from core.model import JointModel
from core.predict import LABELLED, PREDICTORS

from .backbone import SchemaBackbone
from .dataset import TableDataset
from .labels import label_columns, read_labels
from .read import read_table
from .schema import warn_unknown

if TYPE_CHECKING:
    import pandas as pd


def encode_rows(model: JointModel, frame: pd.DataFrame, source: str) -> dict[str, torch.Tensor]:
    """The model's own preprocessing of ``frame``: ``{"numeric", "categorical"}`` for every row."""
    schema = model.backbone.schema if isinstance(model.backbone, SchemaBackbone) else None
    if schema is None:
        raise DataError(f"{source}: this model's backbone ({type(model.backbone).__name__}) has no tabular schema")
    numeric, categorical, unknown = schema.encode(frame, source)
    warn_unknown(unknown, source)
    return {"numeric": numeric, "categorical": categorical}


def row_batches(n: int, batch_size: int) -> Iterator[range]:
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


def row_records(model: JointModel, frame: pd.DataFrame, rows: range, out: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """``{"row", "id"?, task: prediction}`` per row (label columns in ``frame`` are ignored)."""
    id_column = model.extra.get("id_column")
    ids = frame[id_column].tolist() if id_column and id_column in frame.columns else None
    return [
        {"row": row, **({"id": ids[row]} if ids is not None else {}), **{t: preds[i] for t, preds in out.items()}}
        for i, row in enumerate(rows)
    ]


def as_frame(inputs: Any) -> tuple[pd.DataFrame, str]:
    """What a user has for a table model as a DataFrame, and how errors name it: a DataFrame, a
    list of ``{column: value}`` records (or one record), or a table file (any format ``read_table`` reads)."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        return inputs.reset_index(drop=True), "the DataFrame"
    if isinstance(inputs, (str, Path)):
        return read_table(inputs), str(inputs)
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and inputs and all(isinstance(r, Mapping) for r in inputs):
        return pd.DataFrame.from_records(list(inputs)), "the records"
    raise DataError(
        f"a table model reads a pandas DataFrame, a list of {{column: value}} records or a table file "
        f"(.csv, .tsv, .parquet, .jsonl), not {type(inputs).__name__}"
    )


@PREDICTORS.register("table")
def predict_table(
    model: JointModel, inputs: Any, out_path: Path | None = None, batch_size: int = 512
) -> list[dict[str, Any]]:
    """Predictions for every row of a DataFrame, records or a table file."""
    frame, source = as_frame(inputs)
    encoded = encode_rows(model, frame, source)
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for rows in row_batches(len(frame), batch_size):
        batch = {k: v[rows.start : rows.stop].to(device) for k, v in encoded.items()}
        records += row_records(model, frame, rows, model.predict(batch))
    return records


@LABELLED.register("table")
def labelled_table(model: JointModel, path: str | Path) -> list[Source]:
    """A labelled table file scored by a saved model: its schema reads the features, each task type
    reads the label column(s) the model's data spec names, with the class order of training."""
    frame, source = as_frame(path)
    encoded = encode_rows(model, frame, source)
    labels, owners = {}, {}
    specs = label_columns(model.extra.get("data", {}).get("labels") or {})
    for label in specs:
        task = model.tasks.get(label.task)
        if task is None or not set(label.columns) & set(frame.columns):  # a head left out, or not labelled here
            continue
        names = task.label_names
        if names and "classes" in inspect.signature(label.owner.encode_labels).parameters:
            label.options.setdefault("classes", names)  # the model's order, not the new file's sorted values
        values = read_labels(frame, label, source)
        if names and values.updates.get("label_names", names) != names:
            raise DataError(
                f"{source}: task '{label.task}' has the labels {values.updates['label_names']} in column(s) "
                f"{label.columns}, the model was trained on {names}"
            )
        labels[label.task], owners[label.task] = torch.as_tensor(values.values), label.owner
    tasks = [t for t, y in labels.items() if owners[t].labelled_rows(y.numpy()).any()]
    if not tasks:
        wanted = ", ".join(f"{label.columns} (task '{label.task}')" for label in specs if label.task in model.tasks)
        raise DataError(f"{source} labels none of the model's tasks; give label column(s): {wanted}")
    dataset = TableDataset(encoded["numeric"], encoded["categorical"], labels, owners, source=source)
    return [Source("table", dataset, tasks)]
