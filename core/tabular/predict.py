"""``jointtrain predict RUN rows.csv`` (and ``model.predict(frame)``) for any model whose backbone
carries a tabular schema: one record per row, ``{"row", "id"?, task: prediction}`` (the per-type
schema of ``core.tasks``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.errors import DataError
from core.model import JointModel
from core.predict import PREDICTORS

from .read import read_table
from .schema import TabularSchema, warn_unknown

if TYPE_CHECKING:
    import pandas as pd


def encode_rows(model: JointModel, frame: pd.DataFrame, source: str) -> dict[str, torch.Tensor]:
    """The model's own preprocessing of ``frame``: ``{"numeric", "categorical"}`` for every row."""
    schema = getattr(model.backbone, "schema", None)
    if not isinstance(schema, TabularSchema):
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
