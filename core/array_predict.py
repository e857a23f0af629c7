"""The ``tensor`` predictor: rows of numbers (a ``.npy`` / ``.csv`` file without header, or an array)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .model import JointModel
from .predict import PREDICTORS


def read_array(inputs: Any) -> tuple[np.ndarray, str]:
    """Rows of numbers and where they came from: a ``.npy`` / ``.csv`` (no header) file or an array-like."""
    if not isinstance(inputs, (str, Path)):
        try:
            return np.asarray(inputs, dtype=np.float32), "inputs"
        except (TypeError, ValueError) as e:
            raise DataError(f"inputs of type {type(inputs).__name__} are not rows of numbers: {e}") from e
    path = Path(inputs)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    try:
        return (np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)), str(path)
    except ValueError as e:
        raise DataError(f"{path}: cannot read numeric rows: {e}") from e


@PREDICTORS.register("tensor")
def predict_tensor(
    model: JointModel, inputs: Any, out_path: Path | None = None, batch_size: int = 256
) -> list[dict[str, Any]]:
    """Rows of numbers (a ``.npy`` / ``.csv`` file without header, or an array), one sample per row."""
    array, source = read_array(inputs)
    expected = model.extra.get("input_shape")
    x = torch.as_tensor(array, dtype=torch.float32)
    if expected is not None and list(x.shape[1:]) != list(expected):
        raise DataError(f"{source}: rows have shape {list(x.shape[1:])}, the model expects {expected}")
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for start in range(0, len(x), batch_size):
        out = model.predict(x[start : start + batch_size].to(device))
        for i in range(len(next(iter(out.values())))):
            records.append({"row": start + i, **{t: preds[i] for t, preds in out.items()}})
    return records
